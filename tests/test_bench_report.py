"""The benchmark report: report.md and its charts from whatever JSON figures a bench folder holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from benchmarks import report

CONVERT = {
    "date": "2026-01-02",
    "machine": "2 cores (Test CPU)",
    "samples": 64,
    "shard_bytes": 8_000_000,
    "source_bytes": 140_000_000,
    "zarr_bytes": 104_000_000,
    "wds_bytes": 105_000_000,
    "seconds": {
        "load only (1 process)": [6.0, 6.4, 5.8],
        "convert, 1 worker": [9.0, 9.5, 9.8],
        "convert, 2 workers": [5.0, 5.2, 4.9],
    },
    "planning_seconds": {"1": [0.4, 0.5, 0.6], "2": [0.5, 0.5, 0.5]},
    "startup_seconds": {"1": [1.1, 1.0, 1.2], "2": [1.5, 1.4, 1.6]},
    "worker_peak_mb": {"64": [400.0, 410.0, 405.0], "128": [402.0, 412.0, 407.0]},
    "encodings": {"img": {"cname": "zstd", "clevel": 5, "shuffle": 2}},
}
READ = {
    "date": "2026-01-03",
    "machine": "2 cores (Read CPU)",
    "samples": 64,
    "batch_size": 8,
    "results": [
        {"reader": "torch.load (baseline)", "fields": "all", "workers": 0, "samples_per_s": 10.0, "vs_baseline": 1.0},
        {"reader": "ZarrDataset", "fields": "img+label", "workers": 0, "samples_per_s": 400.0, "vs_baseline": 40.0},
        {"reader": "ZarrDataset", "fields": "all", "workers": 2, "samples_per_s": 90.0, "vs_baseline": 9.0},
    ],
}
CHARTS = ("throughput.png", "conversion.png", "bytes.png")


def _bench_dir(tmp_path: Path, convert: bool, read: bool) -> Path:
    folder = tmp_path / "bench"
    folder.mkdir()
    if convert:
        (folder / "convert.json").write_text(json.dumps(CONVERT))
    if read:
        (folder / "read.json").write_text(json.dumps(READ))
    return folder


@pytest.mark.parametrize(("convert", "read"), [(True, True), (True, False), (False, True)])
def test_bench_report(tmp_path, convert, read):
    folder = _bench_dir(tmp_path, convert, read)
    (folder / "throughput.png").write_bytes(b"stale")  # a chart from an earlier run
    path = report.write_report(folder)
    assert path == folder / "report.md"
    text = path.read_text()
    expected_charts = ({"conversion.png", "bytes.png"} if convert else set()) | ({"throughput.png"} if read else set())
    assert {p.name for p in folder.glob("*.png")} == expected_charts
    for name in expected_charts:
        with Image.open(folder / name) as image:
            assert image.format == "PNG" and min(image.size) > 100
        assert f"]({name})" in text
    assert ("## Reading" in text) == read and ("## Conversion" in text) == convert
    if convert:
        assert "2026-01-02" in text and "2 cores (Test CPU)" in text
        assert "| convert, 2 workers | 5.00 | 12.8 | 1.20× |" in text  # 64 / median 5.0 s; 6.0 s / 5.0 s
        assert "| zarr | 104,000,000 | 0.743 |" in text
        assert "1 worker: planning 0.5 s, cluster start-up 1.1 s; 2 workers: planning 0.5 s" in text
    if read:
        assert "2026-01-03" in text and "| ZarrDataset | img+label | 0 | 400.0 | 40.00× |" in text
        assert "64 samples, batches of 8; 2 cores (Read CPU)" in text


def test_bench_report_needs_some_figures(tmp_path):
    with pytest.raises(FileNotFoundError, match="none of convert.json, read.json, scale.json, s3.json"):
        report.write_report(_bench_dir(tmp_path, False, False))


def test_bench_report_compares_the_outputs_converted_for_size_and_for_speed(tmp_path):
    def row(reader: str, fields: str, rate: float) -> dict:
        return {"reader": reader, "fields": fields, "workers": 0, "samples_per_s": rate, "vs_baseline": None}

    read = {
        **READ,
        "output_bytes": {
            "size": {"source_bytes": 1000, "zarr_bytes": 719, "wds_bytes": 723, "encodings": {}},
            "speed": {"source_bytes": 1000, "zarr_bytes": 1263, "wds_bytes": 1267, "encodings": {}},
        },
        "results": [
            row("npy, uncompressed", "img+label", 2000.0),
            row("streaming", "all", 600.0),
            row("streaming, compact", "img+label", 1800.0),
            row("streaming, compact", "all", 630.0),
            row("streaming, compact, speed codecs", "img+label", 6000.0),
            row("streaming, compact, speed codecs", "all", 1320.0),
        ],
    }
    folder = tmp_path / "bench"
    folder.mkdir()
    (folder / "read.json").write_text(json.dumps(read))
    text = report.write_report(folder).read_text()
    assert "| `--prefer size` | 0.723 | 0.719 | 0.90× | 1.05× |" in text
    assert "| `--prefer speed` | 1.267 | 1.263 | 3.00× | 2.20× |" in text

    read["results"] = [r for r in read["results"] if r["reader"] != "npy, uncompressed"]
    (folder / "read.json").write_text(json.dumps(read))
    text = report.write_report(folder).read_text()
    assert "| `--prefer speed` | 1.267 | 1.263 | - | 2.20× |" in text, "a missing reference is no ratio"


def test_bench_report_shows_the_packed_rows_with_their_targets_or_why_there_are_none(tmp_path):
    packed = {
        "samples": 64,
        "workers": 2,
        "rounds": 5,
        "archive_bytes": {"deflate": 145_000_000, "zipcrypto": 145_000_000, "aes": 139_000_000, "deflate64": 136e6},
        "samples_per_s": {
            "deflate": [30.0, 31.0, 29.0, 30.0, 30.0],
            "zipcrypto": [27.0, 27.9, 26.1, 27.0, 27.0],
            "aes": [29.0, 30.0, 28.0, 29.0, 29.0],
            "deflate64": [21.0, 21.7, 20.3, 21.0, 21.0],
        },
        "other_load_cores": 0.1,
    }
    folder = _bench_dir(tmp_path, True, False)
    (folder / "convert.json").write_text(json.dumps({**CONVERT, "packed": packed}))
    text = report.write_report(folder).read_text()
    assert "### Encrypted and Deflate64 sources" in text and "The same 64 samples packed four ways" in text
    assert "| source zip (same samples) | MB | samples/s converting | vs deflate | target |" in text
    assert "| deflate (`zip -r`) | 145.0 | 30.0 (29.0–31.0) | 1.000× |  |" in text
    assert "| ZipCrypto, deflate (`zip -r -P`) | 145.0 | 27.0 (26.1–27.9) | 0.900× | ≥ 0.8 (met) |" in text
    assert "| WinZip AES-256, deflate (`7z -mem=AES256`) | 139.0 | 29.0 (28.0–30.0) | 0.967× | ≥ 0.9 (met) |" in text
    assert "| Deflate64 (`7z -mm=Deflate64`) | 136.0 | 21.0 (20.3–21.7) | 0.700× | ≥ 0.8 (NOT met) |" in text

    skipped = "packed-source rows skipped: 7-Zip `7z` (apt install 7zip) not found on PATH"
    (folder / "convert.json").write_text(json.dumps({**CONVERT, "packed": {"skipped": skipped}}))
    text = report.write_report(folder).read_text()
    assert f"### Encrypted and Deflate64 sources\n\n{skipped}\n" in text
    (folder / "convert.json").write_text(json.dumps(CONVERT))
    assert "Encrypted" not in report.write_report(folder).read_text(), "figures from before the packed rows"


def test_bench_report_shows_object_storage_and_http_against_local_files(tmp_path):
    folder = tmp_path / "bench"
    folder.mkdir()
    row = {"seconds": [0.5]}
    http = [
        {"where": "local files", "fields": "all", "workers": 2, "samples_per_s": 200.0, "vs_local": 1.0},
        {"where": "HTTP, loopback", "fields": "all", "workers": 2, "samples_per_s": 100.0, "vs_local": 0.5},
    ]
    http[0]["round_ratios"], http[1]["round_ratios"] = [], [0.4, 0.6]
    s3 = {
        "date": "2026-01-04",
        "machine": "2 cores (S3 CPU)",
        "samples": 64,
        "results": [{"system": "streaming", "where": "S3, loopback", "samples_per_s": 120.0, "vs_local": 0.06, **row}],
        "http": {"samples": 64, "repeats": 2, "other_load_cores": 0.5, "rows": http},
    }
    (folder / "s3.json").write_text(json.dumps(s3))
    text = report.write_report(folder).read_text()
    assert "## Object storage" in text and "2026-01-04" in text and "2 cores (S3 CPU)" in text
    assert "| streaming | S3, loopback | 120.0 | 0.06× |" in text
    assert "| HTTP, loopback | all | 2 | 100.0 | 0.50× | 0.40–0.60 |" in text
    assert "| local files | all | 2 | 200.0 | 1.00× | - |" in text
    assert "median of 2 interleaved turns; other processes kept 0.5 cores busy" in text
