"""The reading benchmark runs end to end on a tiny set and returns the structure the report reads.

Timings are never checked here: a benchmark is not a test, and a shared machine is noisy.
"""

from __future__ import annotations

import json

import pytest
from conftest import assert_bit_exact

from pipeline.bench.reading import FIELD_SETS, READERS, SINGLE_THREAD, TorchLoadDataset, prepare, run
from pipeline.random_access import ZarrDataset
from pipeline.schema import FIELDS

SAMPLES = 4


@pytest.fixture(scope="module")
def scratch(tmp_path_factory, dask_scheduler):
    """A scratch directory with the benchmark's inputs already made (the benchmark reuses them)."""
    path = tmp_path_factory.mktemp("bench-scratch")
    prepare(SAMPLES, path, dask_scheduler)
    return path


@pytest.mark.slow
def test_reading_benchmark_result_structure(tmp_path, scratch, dask_scheduler, capsys):
    result = run(samples=SAMPLES, repeats=1, scratch=scratch, workers=(0, 2), steady=False, scheduler=dask_scheduler)

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
    }
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

    # the report generator reads this structure from bench/read.json
    pytest.importorskip("matplotlib")
    from pipeline.bench.report import READ_JSON, write_report

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


@pytest.mark.slow
def test_temporary_scratch_is_removed(tmp_path, dask_scheduler, monkeypatch):
    made = tmp_path / "made-by-run"
    monkeypatch.setattr("pipeline.bench.reading.tempfile.mkdtemp", lambda **_: str(made.mkdir() or made))
    result = run(samples=SAMPLES, repeats=1, workers=(0,), steady=False, scheduler=dask_scheduler)
    assert {r["workers"] for r in result["results"]} == {0}
    assert len(result["results"]) == len(READERS) * len(FIELD_SETS)
    assert not made.exists(), "the ~1 GB scratch of a default run is not left behind"
