"""Encodings chosen for size (the default) or for speed (``--prefer speed``): the rule, and a
conversion made with it, which stays bit-exact and keeps its preference across re-runs."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.convert import ConvertOptions, convert
from pipeline.errors import OutputError
from pipeline.read.zarr_dataset import ZarrDataset
from pipeline.store import codecs
from pipeline.store.codecs import CANDIDATES, FAST_CANDIDATES, Encoding, Measurement, pick
from pipeline.store.manifest import read_manifest
from pipeline.verify import verify

from conftest import assert_bit_exact, fast_options, manifest_json, tensorstore_read

SMALL = Encoding("zstd", 5, 2)
FAST = Encoding("lz4", 1, 0)
MIDDLE = Encoding("zstd", 1, 1)
RAW_BYTES = 1_000_000


def _result(encoding: Encoding, nbytes: int, decode_ms: float) -> Measurement:
    return Measurement(encoding, nbytes=nbytes, encode_seconds=0.001, decode_seconds=decode_ms / 1000)


def test_size_first_takes_the_cheapest_of_the_smallest():
    results = [_result(SMALL, 400_000, 0.6), _result(MIDDLE, 410_000, 0.3), _result(FAST, 900_000, 0.1)]
    assert pick(results, RAW_BYTES).encoding == MIDDLE, "2.5 % larger and twice as fast: as small"
    assert pick(results[::2], RAW_BYTES).encoding == SMALL, "more than twice the bytes is never as small"


def test_speed_first_takes_the_cheapest_that_compresses():
    results = [_result(SMALL, 400_000, 0.6), _result(FAST, 900_000, 0.1), _result(MIDDLE, 1_000_004, 0.05)]
    assert pick(results, RAW_BYTES, "speed").encoding == FAST, "larger than the raw bytes: not eligible"
    incompressible = [_result(SMALL, 1_000_100, 0.6), _result(FAST, 1_000_010, 0.2)]
    assert pick(incompressible, RAW_BYTES, "speed").encoding == FAST, "none compresses: the cheapest"
    with pytest.raises(ValueError, match="prefer must be one of"):
        pick(results, RAW_BYTES, "smallest")
    with pytest.raises(ValueError, match="prefer must be one of"):
        ConvertOptions(prefer="fast")
    with pytest.raises(ValueError, match="encodings are given"):
        ConvertOptions(prefer="speed", encodings={"img": SMALL})
    with pytest.raises(ValueError, match="no measured candidates"):
        pick([], RAW_BYTES)


def test_lz4_is_a_candidate_only_when_speed_comes_first(monkeypatch):
    """The candidates tried, with measurements made up so that LZ4 would win either way."""
    tried: list[Encoding] = []

    def made_up(arrays, encoding):
        tried.append(encoding)
        return _result(
            encoding, 400_000 if encoding.cname == "zstd" else 399_000, 0.1 if encoding.cname == "lz4" else 1
        )

    monkeypatch.setattr(codecs, "measure", made_up)
    image = np.zeros((4, 4), np.float32)
    assert codecs.choose([image]).encoding.cname == "zstd" and tried == list(CANDIDATES)
    tried.clear()
    assert codecs.choose([image], prefer="speed").encoding in FAST_CANDIDATES
    assert tried == [*CANDIDATES, *FAST_CANDIDATES]


@pytest.mark.slow
def test_a_conversion_for_speed_is_bit_exact_and_keeps_its_preference(tmp_path, dask_scheduler, train_zip, converted):
    out = tmp_path / "out"
    convert([train_zip], out, fast_options(dask_scheduler, prefer="speed"))
    done = read_manifest(out)
    assert done.identity.prefer == "speed" and manifest_json(out)["identity"]["prefer"] == "speed"
    assert "prefer" not in manifest_json(converted)["identity"], "a default output's manifest is as before"
    assert verify(out, [train_zip], scheduler=dask_scheduler).ok
    expected = ZarrDataset(converted, "train", ["img", "label"])[1]
    assert_bit_exact(tensorstore_read(out, "train", "img", 1), expected["img"].numpy(), "img through tensorstore")

    assert convert([train_zip], out, fast_options(dask_scheduler, prefer="speed")).up_to_date
    with pytest.raises(OutputError, match="other sources or options"):
        convert([train_zip], out, fast_options(dask_scheduler))
