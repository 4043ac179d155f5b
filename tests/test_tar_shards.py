"""Tar member encoding: every dtype round-trips, damaged payloads are named."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pipeline.errors import OutputError
from pipeline.store.codecs import (
    CANDIDATES,
    FAST_CANDIDATES,
    SIZE_SLACK_BYTES,
    SIZE_TOLERANCE,
    Encoding,
    choose,
    measure,
)
from pipeline.store.tar_shards import ShardWriter, decode_field, encode_field, iter_shard

DTYPES = ["|b1", "|u1", "|i1", "<u2", "<i2", "<i4", "<u4", "<i8", "<f2", "<f4", "<f8"]


@settings(max_examples=60, deadline=None)
@given(
    array=st.sampled_from(DTYPES).flatmap(
        lambda dtype: hnp.arrays(np.dtype(dtype), hnp.array_shapes(min_dims=1, max_dims=4, max_side=9))
    ),
    encoding=st.sampled_from(CANDIDATES + FAST_CANDIDATES),
)
def test_any_array_round_trips_bit_exactly(array, encoding):
    decoded = decode_field(encode_field(array, encoding))
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    assert decoded.tobytes() == array.tobytes()  # NaNs and signed zeros included
    assert decoded.flags.writeable


def test_damaged_payload_is_an_output_error_naming_the_member():
    payload = bytearray(encode_field(np.arange(1000, dtype=np.float32), Encoding()))
    with pytest.raises(OutputError, match="k.img"):
        decode_field(b"garbage" + bytes(payload), "k.img")
    with pytest.raises(OutputError, match="k.img: damaged"):
        decode_field(bytes(payload[: len(payload) // 2]), "k.img")


@pytest.mark.parametrize("noise", [0.0, 0.02])
def test_choose_stays_near_the_smallest_output(noise):
    rng = np.random.default_rng(0)
    image = np.clip(np.linspace(0, 1, 512 * 512).reshape(512, 512) + noise * rng.standard_normal((512, 512)), 0, 1)
    arrays = [image.astype(np.float32), (image > 0.5).astype(np.uint8)]
    for array in arrays:
        sizes = {c: measure([array], c).nbytes for c in CANDIDATES}
        chosen = choose([array])
        smallest = min(sizes.values())
        assert chosen.nbytes <= smallest + max(SIZE_TOLERANCE * smallest, SIZE_SLACK_BYTES)
    assert choose([arrays[1]]).nbytes < arrays[1].nbytes / 20, "a 0/1 mask compresses to almost nothing"


def test_shard_writer_is_atomic(tmp_path):
    path = tmp_path / "s.tar"
    writer = ShardWriter(path)
    writer.add("p01_aug001", {"img": encode_field(np.ones(3, np.float32), Encoding())})
    writer.close()
    assert not path.exists(), "nothing under the final name before commit"
    writer.commit()
    assert [s["__key__"] for s in iter_shard(path)] == ["p01_aug001"]
    aborted = ShardWriter(tmp_path / "t.tar")
    aborted.abort()
    assert list(tmp_path.iterdir()) == [path]


def test_truncated_shard_is_named(tmp_path):
    path = tmp_path / "s.tar"
    writer = ShardWriter(path)
    for i in range(3):
        writer.add(f"p01_aug00{i}", {"img": encode_field(np.random.rand(64, 64), Encoding())})
    writer.close()
    writer.commit()
    path.write_bytes(path.read_bytes()[:20000])
    with pytest.raises(OutputError, match="s.tar"):
        list(iter_shard(path))
