"""``verify`` catches what it exists to catch: outputs that are well-formed but hold a wrong value.

Every file stays valid here: Zarr shards are rewritten with correct indexes and CRC-32C (by
zarr-python itself, or by our shard writer), tar shards are rewritten as valid tars with validly
encoded members, and where a test says so the manifest's size and sha256 of the tar are updated
too. Only the values are wrong, so only a comparison of values can notice; ``verify`` must name
split, format, key and field, against the sources and against the manifest alike.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.store import manifest, zarr_layout, zarr_store
from pipeline.verify import verify

from conftest import copy_output
from tamper import replace_tar_member

pytestmark = pytest.mark.slow


@pytest.fixture
def out(converted, tmp_path) -> Path:
    return copy_output(converted, tmp_path)


def _where(report) -> list[tuple[str, str]]:
    return sorted((problem.split, problem.where) for problem in report.problems)


def _both_modes(out: Path, sources: list[Path], scheduler: str):
    """The report against the sources and the report against the manifest."""
    return verify(out, sources, scheduler=scheduler), verify(out, scheduler=scheduler)


def _row_of(out: Path, split: str, key: str) -> int:
    info = manifest.read_manifest(out).splits[split]
    return info.rows[info.keys.index(key)]


def test_the_untouched_output_verifies(converted, train_zip, test_zip, dask_scheduler):
    for report in _both_modes(converted, [train_zip, test_zip], dask_scheduler):
        assert report.ok and report.samples == 15, report.problems


def test_one_element_changed_in_a_zarr_chunk_with_every_checksum_valid(out, train_zip, test_zip, dask_scheduler):
    row = _row_of(out, "train", "p01_aug002")
    array = zarr_layout.open_array(out, "train", "img", mode="r+")
    value = array[row]
    value[100, 200] = np.nextafter(value[100, 200], np.float32(2))  # the smallest change a float can take
    array[row] = value  # zarr-python re-encodes the chunk and rewrites the shard's index and CRC-32C
    assert zarr_layout.open_array(out, "train", "img")[row][100, 200] == value[100, 200], "a valid Zarr store"
    for report in _both_modes(out, [train_zip, test_zip], dask_scheduler):
        assert _where(report) == [("train", "zarr:p01_aug002.img")], report.problems
        assert "values differ from the source" in report.problems[0].what


def test_two_samples_chunks_swapped_in_a_zarr_shard(out, train_zip, test_zip, dask_scheduler):
    done = manifest.read_manifest(out)
    shard = done.split("train").shards[1]
    first, second = shard.keys[:2]
    spec, group = done.schema["label"], done.plan.group_samples
    path = zarr_layout.shard_file(out, "train", "label", shard.index, 1 + len(spec.shape))
    chunks = dict(zarr_store.iter_shard_chunks(path, group))
    positions = sorted(chunks)
    writer = zarr_store.ShardFileWriter(path, group)  # valid index and CRC-32C, chunks swapped
    for position in range(group):
        swapped = {positions[0]: positions[1], positions[1]: positions[0]}.get(position, position)
        writer.add(chunks[swapped]) if swapped in chunks else writer.skip()
    writer.close()
    writer.commit()
    for report in _both_modes(out, [train_zip, test_zip], dask_scheduler):
        assert _where(report) == [("train", f"zarr:{first}.label"), ("train", f"zarr:{second}.label")], report.problems


def _plus_one_somewhere(array: np.ndarray) -> np.ndarray:
    array.reshape(-1)[array.size // 3] += 1
    return array


def test_a_tar_member_replaced_by_a_validly_encoded_other_array(out, train_zip, test_zip, dask_scheduler):
    shard = replace_tar_member(out, "test", "p81_aug002", "label", _plus_one_somewhere)
    for report in _both_modes(out, [train_zip, test_zip], dask_scheduler):
        assert _where(report) == [("test", shard.file), ("test", "wds:p81_aug002.label")], report.problems
        # altered: its size differs, or (when the new member pads to the same tar blocks) its sha256
        assert re.fullmatch(r"sha256 differs.*|is \d+ bytes, the manifest says \d+ .*", report.problems[0].what)


def test_a_tar_member_replaced_and_the_manifest_updated_to_match(out, train_zip, test_zip, dask_scheduler):
    """The tar's recorded size and sha256 are those of the altered file: only the values give it away."""
    replace_tar_member(out, "train", "p02_aug005", "shape", lambda a: a[::-1].copy(), match=True)
    for report in _both_modes(out, [train_zip, test_zip], dask_scheduler):
        assert _where(report) == [("train", "wds:p02_aug005.shape")], report.problems


def test_an_empty_zarr_chunk_where_a_sample_belongs(out, train_zip, dask_scheduler):
    done = manifest.read_manifest(out)
    shard = done.split("train").shards[0]
    spec, group = done.schema["mask"], done.plan.group_samples
    path = zarr_layout.shard_file(out, "train", "mask", shard.index, 1 + len(spec.shape))
    writer = zarr_store.ShardFileWriter(path, group)
    for position, chunk in zarr_store.iter_shard_chunks(path, group):
        writer.skip() if position == 0 else writer.add(chunk)
    writer.close()
    writer.commit()
    report = verify(out, scheduler=dask_scheduler)
    assert _where(report) == [("train", f"zarr:{shard.keys[0]}.mask")], report.problems
    assert "no chunk was written" in report.problems[0].what


def test_a_missing_tar_shard_is_named(out, dask_scheduler):
    first = manifest.read_manifest(out).split("train").shards[0]
    (out / first.file).unlink()
    report = verify(out, scheduler=dask_scheduler)
    assert _where(report) == [("train", first.file)] and report.problems[0].what == "missing"


def test_verify_against_the_manifest_never_imports_torch():
    """Its command stays light (docs/BENCHMARKS.md): the password check, which reads sources, loads
    torch only when sources are given."""
    import subprocess
    import sys

    code = (
        "import sys; import pipeline.cli, pipeline.cli.commands, pipeline.verify.run, pipeline.verify.compare; "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('pipeline'))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
