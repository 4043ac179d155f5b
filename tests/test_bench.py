"""The reading benchmark runs end to end on a tiny set and returns the structure the report reads;
the scale benchmark's arithmetic and rendering work on made-up figures.

Timings are never checked here: a benchmark is not a test, and a shared machine is noisy.
"""

from __future__ import annotations

import json
import statistics
import sys

import numpy as np
import pytest
import torch

from pipeline.read.zarr_dataset import ZarrDataset
from pipeline.schema import FIELDS

from benchmarks.augment import Augmented, ElasticDeformation
from benchmarks.baselines import TorchLoadDataset, prepare
from benchmarks.reading import (
    AUGMENTED,
    AUGMENTED_READERS,
    FIELD_SETS,
    MIXED,
    MIXED_FIELDS,
    READERS,
    SINGLE_THREAD,
    run,
)
from conftest import assert_bit_exact

SAMPLES = 4


@pytest.fixture(scope="module")
def scratch(tmp_path_factory, dask_scheduler):
    """A scratch directory with the benchmark's inputs already made (the benchmark reuses them)."""
    path = tmp_path_factory.mktemp("bench-scratch")
    prepare(SAMPLES, path, dask_scheduler)
    return path


@pytest.mark.slow
def test_reading_benchmark_result_structure(tmp_path, scratch, dask_scheduler, capsys):
    result = run(
        samples=SAMPLES,
        repeats=1,
        scratch=scratch,
        workers=(0, 2),
        steady=False,
        scheduler=dask_scheduler,
        augment_workers=(0, 1),
    )

    assert json.loads(json.dumps(result)) == result, "JSON-able"
    assert {"date", "machine", "samples", "batch_size", "results"} <= set(result)
    assert result["samples"] == SAMPLES
    rows = result["results"]
    expected = {
        (reader, fields, workers)
        for reader in READERS
        for fields in FIELD_SETS
        for workers in (0, 2)
        if not (reader == SINGLE_THREAD and workers)  # measured in process only
        and not (reader == MIXED and fields != MIXED_FIELDS)  # mixing: one field set
    } | {(reader, AUGMENTED, workers) for reader in AUGMENTED_READERS for workers in (0, 1)}
    assert {(r["reader"], r["fields"], r["workers"]) for r in rows} == expected
    assert len(rows) == len(expected)
    baseline = {(x["fields"], x["workers"]): x["samples_per_s"] for x in rows if x["reader"] == "baseline"}
    for r in rows:
        assert set(r) == {"reader", "fields", "workers", "samples_per_s", "vs_baseline", "seconds"}
        assert len(r["seconds"]) == 1 and r["seconds"][0] > 0
        assert r["samples_per_s"] == pytest.approx(result["samples"] / r["seconds"][0])
        assert r["vs_baseline"] == pytest.approx(r["samples_per_s"] / baseline[(r["fields"], r["workers"])])
    printed = capsys.readouterr().out
    assert "| system | fields | workers | samples/s | × baseline |" in printed
    assert result["machine"] in printed
    assert "mixing two sources, img+label: " in printed

    # the report generator reads this structure from bench/read.json
    pytest.importorskip("matplotlib")
    from benchmarks.report import READ_JSON, write_report

    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / READ_JSON).write_text(json.dumps(result))
    assert "## Reading" in write_report(bench).read_text()


def test_baseline_reads_the_same_samples_as_the_converted_output(scratch, dask_scheduler):
    tree, out = prepare(SAMPLES, scratch, dask_scheduler)
    baseline = TorchLoadDataset(tree, FIELDS)
    zarr_ds = ZarrDataset(out, fields=FIELDS)
    assert sorted(baseline.keys) == sorted(zarr_ds.keys)
    for i, key in enumerate(baseline.keys):
        expected = zarr_ds[zarr_ds.index_of(key=key)]
        got = baseline[i]
        assert got["__key__"] == key
        for field in FIELDS:
            assert_bit_exact(got[field].numpy(), expected[field].numpy(), f"{key}.{field}")
    assert len(baseline) == SAMPLES


def test_augmented_baseline_deforms_as_the_readers_transform(scratch, dask_scheduler):
    """The per-file baseline with augmentation does the same work as the readers' transform: the
    same deformed samples, bit for bit (epoch 0, seed 0)."""
    tree, out = prepare(SAMPLES, scratch, dask_scheduler)
    fields, elastic = ("img", "label"), ElasticDeformation()
    baseline = Augmented(TorchLoadDataset(tree, fields), elastic, seed=0)
    plain = ZarrDataset(out, fields=fields)
    zarr_ds = ZarrDataset(out, fields=fields, transform=elastic, seed=0)
    for i in range(len(baseline)):
        got = baseline[i]
        key = got["__key__"]
        want, raw = zarr_ds[zarr_ds.index_of(key=key)], plain[plain.index_of(key=key)]
        for field in fields:
            assert_bit_exact(got[field].numpy(), want[field].numpy(), f"{key}.{field}")
        assert not torch.equal(got["img"], raw["img"]), f"{key}: the image is deformed"
        assert set(got["label"].unique().tolist()) <= set(raw["label"].unique().tolist()), "no blended classes"
        assert (got["label"] != raw["label"]).float().mean() < 0.5, "a deformation, not a scramble"


def test_elastic_deformation_without_strength_is_the_identity(scratch, dask_scheduler):
    _, out = prepare(SAMPLES, scratch, dask_scheduler)
    _, record = ZarrDataset(out, fields=("img", "label")).read_record(0)
    still = ElasticDeformation(alpha=0, degrees=0, shift=0)(
        {f: a.copy() for f, a in record.items()}, np.random.default_rng(1)
    )
    assert np.abs(still["img"] - record["img"]).max() < 1e-5 and np.array_equal(still["label"], record["label"])
    assert still["img"].dtype == record["img"].dtype and still["label"].dtype == record["label"].dtype
    # label maps are sampled nearest-neighbour: classes 0 and 10 in blocks never blend into 1..9
    blocks = np.kron(np.indices((8, 8)).sum(0) % 2, np.ones((64, 64), np.int64))[None] * 10
    moved = ElasticDeformation()({"img": record["img"].copy(), "label": blocks.copy()}, np.random.default_rng(2))
    assert set(np.unique(moved["label"]).tolist()) == {0, 10} and not np.array_equal(moved["label"], blocks)


@pytest.mark.slow
def test_temporary_scratch_is_removed(tmp_path, dask_scheduler, monkeypatch):
    made = tmp_path / "made-by-run"
    monkeypatch.setattr("benchmarks.reading.tempfile.mkdtemp", lambda **_: str(made.mkdir() or made))
    result = run(samples=SAMPLES, repeats=1, workers=(0,), steady=False, scheduler=dask_scheduler, augment_workers=(0,))
    assert {r["workers"] for r in result["results"]} == {0}
    assert len(result["results"]) == (len(READERS) - 1) * len(FIELD_SETS) + 1 + len(AUGMENTED_READERS)  # MIXED: once
    assert not made.exists(), "the ~1 GB scratch of a default run is not left behind"


# ------------------------------------------------------------------ make bench-scale: the logic, not the timings


def test_scale_sets_follow_the_release_layout():
    from benchmarks.scale.sets import layout, set_configs, set_name

    assert layout(2) == ((1, 1), (1, 1))
    assert layout(64) == ((4, 13), (1, 12))
    assert layout(640) == ((4, 128), (1, 128))
    for n in range(2, 300):
        (tp, ts), (sp, ss) = layout(n)
        assert tp * ts + sp * ss == n and min(tp, ts, sp, ss) >= 1, n
    with pytest.raises(ValueError):
        layout(1)
    configs = set_configs(640)
    assert {c.root for c in configs.values()} == {"Train", "Test"}
    assert configs["SSMSpine_Test.zip"].first_patient > configs["SSMSpine_Train.zip"].patients
    assert set_name(640) == "train4x128-test1x128"


def test_scale_command_lines():
    from pathlib import Path

    from benchmarks.scale.commands import command_argv

    sources, out = [Path("a/SSMSpine_Train.zip"), Path("a/SSMSpine_Test.zip")], Path("o")
    tail = ["--out", "o", "--workers", "2", "--no-progress"]
    assert command_argv("convert", sources, out)[-8:] == ["convert", *map(str, sources), *tail]
    assert command_argv("verify sources", sources, out)[-8:] == ["verify", *map(str, sources), *tail]
    assert command_argv("verify manifest", sources, out)[-6:] == ["verify", *tail]
    with pytest.raises(ValueError):
        command_argv("info", sources, out)


def test_scale_estimate_arithmetic():
    from benchmarks.scale.summary import net_per_sample, release_estimate

    assert net_per_sample(30.0, 102, 10.0, 2) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        net_per_sample(30.0, 2, 10.0, 2)
    # fixed cost + (samples - fixed samples) x per-sample cost x measured/used workers
    assert release_estimate(10.0, 0.1, samples=102, fixed_samples=2) == pytest.approx(20.0)
    assert release_estimate(10.0, 0.1, samples=102, fixed_samples=2, workers=16, measured_workers=2) == pytest.approx(
        11.25
    )
    # never faster than moving the bytes: 100 samples x 1 GB at 1 GB/s
    disk = {"io_bytes_per_sample": 1e9, "disk_bytes_per_s": 1e9}
    assert release_estimate(10.0, 0.1, samples=102, fixed_samples=2, workers=16, **disk) == pytest.approx(110.0)
    assert release_estimate(10.0, -0.01, samples=102, fixed_samples=2) == 10.0, "noise below zero counts as zero"


def _fake_scale_result() -> dict:
    """Raw figures as ``benchmarks.scale.run`` saves them, with round numbers: per command
    ``fixed + per_sample x (n - 2)`` seconds, two rounds."""
    fixed = {"convert": 10.0, "verify sources": 6.0, "verify manifest": 4.0}
    per_sample = {"convert": 0.1, "verify sources": 0.05, "verify manifest": 0.01}
    sets = {}
    for name, n in (("fixed", 2), ("small", 64), ("large", 640)):
        commands = {}
        for which in fixed:
            t = fixed[which] + per_sample[which] * (n - 2)
            commands[which] = {
                "seconds": [t, t + 0.5],
                "coordinator_peak_mb": [300.0, 310.0],
                "worker_peak_mb": [[400.0, 390.0], [410.0, 380.0]],
                "tree_peak_mb": [410.0, 410.0],
            }
        readers = {}
        if name != "fixed":
            figures = {
                "import_s": [2.0],
                "startup_s": [0.001 * n],
                "first_batch_s": [0.05],
                "samples": [n - n // 5],
                "process_s": [3.0],
            }
            readers = {r: figures for r in ("StreamingDataset", "ZarrDataset")}
        sets[name] = {
            "samples": n,
            "layout": {"train": [4, n // 5], "test": [1, n - 4 * (n // 5)]},
            "source_bytes": 2_000_000 * n,
            "zarr_bytes": 1_500_000 * n,
            "wds_bytes": 1_500_000 * n,
            "manifest_bytes": 1000 * n,
            "generation": {"samples": n, "seconds": n * 0.5, "processes": 2},
            "commands": commands,
            "readers": readers,
        }
    return {
        "date": "2026-01-01",
        "machine": "a test",
        "workers": 2,
        "repeats": 2,
        "release_samples": 12_500,
        "workstation_cores": 16,
        "workstation_disk_bytes_per_s": 1.5e9,
        "other_load_cores": 0.1,
        "sets": sets,
        "bench_seconds": 600.0,
    }


def test_scale_summary_and_report(tmp_path):
    from benchmarks.report import SCALE_JSON, write_report
    from benchmarks.scale.render import scale_lines
    from benchmarks.scale.summary import summarise

    raw = _fake_scale_result()
    summary = summarise(raw)
    convert = summary["commands"]["convert"]
    # medians of (t, t + 0.5): the fixed part moves by 0.25, the net per-sample cost stays put
    assert convert["fixed"]["seconds"] == pytest.approx(10.25)
    assert convert["large"]["net_s_per_sample"] == pytest.approx(0.1)
    assert convert["growth"] == pytest.approx(1.0)
    assert not convert["growth_within_noise"]
    assert convert["large"]["worker_peak_mb"] == pytest.approx(405.0), "median over rounds of the largest worker"
    assert convert["release_here_s"] == pytest.approx(10.25 + 12_498 * 0.1)
    # 16 workers: 1/8 of the per-sample time, above the disk floor of 5 MB a sample at 1.5 GB/s
    assert convert["release_workstation_s"] == pytest.approx(10.25 + 12_498 * 0.1 / 8)
    manifest = summary["commands"]["verify manifest"]
    assert manifest["release_workstation_s"] == pytest.approx(4.25 + 12_498 * 3e6 / 1.5e9), "disk-bound"
    ratio = summary["verify_ratios"]["verify sources"]["large"]
    assert ratio == pytest.approx(statistics.median([(6 + 0.05 * 638) / (10 + 63.8), (6.5 + 0.05 * 638) / 74.3]))
    assert summary["manifest"]["large"]["bytes_per_sample"] == 1000
    assert summary["manifest"]["release_bytes"] == 12_500_000
    assert summary["readers"]["ZarrDataset"]["release_startup_s"] == pytest.approx(12.5)

    text = "\n".join(scale_lines(raw))
    assert "| convert | 640 | 74.05 (73.8–74.3) |" in text
    assert "1.00× (met, ≤ 1.2×)" in text
    assert "| StreamingDataset | 640 | 512 |" in text

    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / SCALE_JSON).write_text(json.dumps(raw))
    (bench / "throughput.png").write_bytes(b"stale")
    report = write_report(bench).read_text()
    assert "## Scale" in report and "## Reading" not in report and "`scale.json`" in report
    assert not (bench / "throughput.png").exists(), "charts without figures are removed"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_scale_peak_memory_of_a_spawned_worker(tmp_path):
    """A child started like a Dask worker (multiprocessing spawn) is reported as a worker, with its peak."""
    from benchmarks.scale.commands import run_command
    from benchmarks.scale.config import POLL_SECONDS

    script = (
        "import multiprocessing as mp, time\n"
        "def grow():\n"
        "    block = bytearray(200 << 20)\n"
        "    block[::4096] = b'x' * len(block[::4096])\n"
        "    del block\n"
        f"    time.sleep({3 * POLL_SECONDS})  # the peak is past, and seen before the process exits\n"
        "if __name__ == '__main__':\n"
        "    p = mp.get_context('spawn').Process(target=grow)\n"
        "    p.start(); p.join()\n"
        "    print('OK' if p.exitcode == 0 else 'FAILED')\n"
    )
    path = tmp_path / "grow.py"  # a file: spawned children import the parent's main module
    path.write_text(script)
    run = run_command([sys.executable, str(path)])
    assert "OK" in run.output and run.seconds > 3 * POLL_SECONDS
    assert len(run.worker_peak_mb) == 1 and run.worker_peak_mb[0] >= 200
    assert run.coordinator_peak_mb < 100, "the command's own process did not grow"
    assert run.tree_peak_mb >= run.worker_peak_mb[0]


@pytest.mark.slow
def test_scale_reader_probe(converted):
    """The reader probe runs in a fresh process and reports its figures for the train split."""
    from benchmarks.scale.config import READERS
    from benchmarks.scale.probe import probe_reader

    for reader in READERS:
        figures = probe_reader(reader, converted)
        assert set(figures) == {"import_s", "startup_s", "first_batch_s", "samples", "process_s"}
        assert figures["samples"] == len(ZarrDataset(converted, "train"))
        assert 0 < figures["startup_s"] < figures["process_s"]


def test_whole_command_rows_take_the_median_of_per_round_ratios(tmp_path):
    from benchmarks.conversion import command_rows
    from benchmarks.report import write_report

    # round 2 is slow for all three: per-round ratios (0.7, 0.5, 0.9) → 0.7, not 8/11
    commands = {"convert": [10.0, 20.0, 10.0], "verify sources": [7.0, 10.0, 9.0], "verify manifest": [3.0, 5.0, 5.0]}
    rows = command_rows(commands, 128)
    assert rows[0] == ["`ssmspine convert`", "10.00", "12.8", "1.00×", ""]
    assert rows[1] == ["`ssmspine verify sources`", "9.00", "14.2", "0.70×", "≤ 0.8 (met)"]
    assert rows[2][3:] == ["0.30×", "≤ 0.4 (met)"]
    commands["verify manifest"] = [5.0, 9.0, 5.0]
    assert command_rows(commands, 128)[2][3:] == ["0.50×", "≤ 0.4 (NOT met)"]
    convert = {
        "samples": 128,
        "source_bytes": 100,
        "zarr_bytes": 72,
        "wds_bytes": 72,
        "seconds": {"convert, 2 workers": [4.0]},
        "commands": commands,
    }
    (tmp_path / "convert.json").write_text(json.dumps(convert))
    assert (
        "| `ssmspine verify manifest` | 5.00 | 25.6 | 0.50× | ≤ 0.4 (NOT met) |" in write_report(tmp_path).read_text()
    )


def test_scale_growth_compares_the_commands_own_task_times_where_they_report_them():
    from benchmarks.scale.rounds import task_rate
    from benchmarks.scale.summary import summarise

    printed = (
        "converted 64 samples\n  time: 9.1 s (1.3 s planning, 2.0 s cluster start-up), 31.5 samples/s converting\n"
    )
    assert task_rate(printed) == 31.5
    assert (
        task_rate("verify against manifest: OK\n  time: 2.0 s (1.1 s cluster start-up), 70.0 samples/s checking") == 70
    )
    assert task_rate("no timing here") is None
    raw = _fake_scale_result()
    for name, rate in (("fixed", 1.0), ("small", 40.0), ("large", 32.0)):
        raw["sets"][name]["commands"]["convert"]["task_rate"] = [rate, rate + 1, None]
    convert = summarise(raw)["commands"]["convert"]
    assert convert["growth_basis"] == "tasks" and not convert["growth_within_noise"]
    assert convert["large"]["task_s_per_sample"] == pytest.approx(1 / 32.5)
    assert convert["growth"] == pytest.approx(40.5 / 32.5)
    verify = summarise(raw)["commands"]["verify sources"]
    assert verify["growth_basis"] == "net", "no task rates recorded: the net costs"


# ------------------------------------------------ make bench-convert: the same samples packed four ways


@pytest.fixture(scope="module")
def packed_scratch(tmp_path_factory):
    """A scratch holding a 2-sample tree packed the four ways by Info-ZIP and 7-Zip (the benchmark reuses them)."""
    from benchmarks.packing import PackingUnavailable, find_tools, packed_archives

    try:
        tools = find_tools()
    except PackingUnavailable as exc:
        pytest.skip(str(exc))
    scratch = tmp_path_factory.mktemp("bench-packed")
    return scratch, packed_archives(scratch, 2, tools)


def test_packed_archives_hold_the_same_samples_as_their_rows_claim(packed_scratch):
    import zipfile

    from pipeline.source.passwords import Password
    from pipeline.source.zip_reader import SourceReader

    from benchmarks.packing import PACKINGS, PASSWORD, archive_kinds

    scratch, archives = packed_scratch
    tree = scratch / "packed-tree-2"
    assert list(archives) == [p.key for p in PACKINGS]
    for p in PACKINGS:
        assert archive_kinds(archives[p.key]) == {p.member}
        with zipfile.ZipFile(archives[p.key]) as z:
            members = sorted(i.filename for i in z.infolist() if not i.is_dir())
        assert members == ["Train/p1/aug1.pt", "Train/p2/aug1.pt"], p.key
        with SourceReader(str(archives[p.key]), Password(PASSWORD) if p.encrypted else None) as reader:
            for member in members:
                assert reader.read_bytes(member) == (tree / member).read_bytes(), f"{p.key}: {member}"


def test_packing_failures_and_missing_tools_are_one_line(packed_scratch, monkeypatch, tmp_path):
    from benchmarks import packing

    scratch, _ = packed_scratch
    tools = packing.find_tools()
    secret = packing.PASSWORD.decode()
    broken = packing.Packing("broken", "-", "7z", ("-mm=NoSuchMethod",), True, "deflate", None)
    with pytest.raises(packing.PackingUnavailable) as failed:
        packing.pack(scratch / "packed-tree-2", "Train", tmp_path / "a.zip", broken, tools)
    assert "`7z` failed" in str(failed.value) and "\n" not in str(failed.value) and secret not in str(failed.value)
    claims = packing.Packing("claims", "-", "zip", (), False, "Deflate64", None)
    with pytest.raises(packing.PackingUnavailable, match=r"packed claims as \['deflate'\], not 'Deflate64'"):
        packing.pack(scratch / "packed-tree-2", "Train", tmp_path / "b.zip", claims, tools)

    with pytest.raises(packing.PackingUnavailable) as missing:
        packing.find_tools(lambda name: None if name.startswith("7") else f"/usr/bin/{name}")
    assert str(missing.value) == "packed-source rows skipped: 7-Zip `7z` (apt install 7zip) not found on PATH"
    monkeypatch.setattr(packing.shutil, "which", lambda name: None)
    result = packing.run(tmp_path, 2)
    assert list(result) == ["skipped"] and "Info-ZIP `zip` (apt install zip) and 7-Zip `7z`" in result["skipped"]
    assert packing.packed_lines(result) == [result["skipped"]]
    assert not list(tmp_path.glob("packed-*")), "nothing generated for rows that cannot be measured"


def test_packed_rounds_rotate_and_ratios_are_taken_within_a_round():
    from benchmarks.packing import packed_lines, packed_rows, schedule

    assert [k for _, k in schedule(["a", "b", "c"], 4)] == [*"abc", *"bca", *"cab", *"abc"]
    assert [r for r, _ in schedule(["a", "b"], 2)] == [0, 0, 1, 1]
    # round 2 is slow for all: per-round ratios (0.9, 0.7, 0.8) → 0.8, not 24/30
    packed = {
        "samples": 64,
        "workers": 2,
        "rounds": 3,
        "archive_bytes": {"deflate": 145_000_000, "zipcrypto": 145_000_012, "aes": 139_000_000},
        "samples_per_s": {"deflate": [30.0, 20.0, 30.0], "zipcrypto": [27.0, 14.0, 24.0], "aes": [30.0, 19.0, 26.0]},
        "other_load_cores": 0.25,
    }
    rows = packed_rows(packed)
    assert rows[0] == ["deflate (`zip -r`)", "145.0", "30.0 (20.0–30.0)", "1.000×", ""]
    assert rows[1] == ["ZipCrypto, deflate (`zip -r -P`)", "145.0", "24.0 (14.0–27.0)", "0.800×", "≥ 0.8 (met)"]
    assert rows[2][3:] == ["0.950×", "≥ 0.9 (met)"]
    assert len(rows) == 3, "a packing without figures has no row"
    packed["samples_per_s"]["aes"] = [25.0, 19.0, 26.0]
    assert packed_rows(packed)[2][3:] == ["0.867×", "≥ 0.9 (NOT met)"]
    assert "other processes kept 0.25 cores busy" in packed_lines(packed)[0]


@pytest.mark.slow
def test_packed_rows_measure_every_archive_without_saving_the_password(packed_scratch, dask_scheduler):
    from benchmarks.packing import PACKINGS, PASSWORD, packed_lines, run

    scratch, _ = packed_scratch
    result = run(scratch, 2, rounds=1, scheduler=dask_scheduler)  # reuses the packed archives
    assert json.loads(json.dumps(result)) == result, "JSON-able"
    assert result["samples"] == 2 and result["rounds"] == 1
    assert set(result["samples_per_s"]) == {p.key for p in PACKINGS}
    assert all(len(r) == 1 and r[0] > 0 for r in result["samples_per_s"].values())
    text = json.dumps(result) + "\n".join(packed_lines(result))
    assert PASSWORD.decode() not in text
