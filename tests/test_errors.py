"""One error type per kind: an unknown split, field, key or index is a NotFoundError from every reader."""

from __future__ import annotations

import pytest
import webdataset

from pipeline import StreamingDataset, ZarrDataset, decode_wds_sample, open_zarr
from pipeline.cli import main
from pipeline.errors import NotFoundError, OutputError, SampleIndexError, SampleKeyError, SSMSpineError


def test_the_error_types_are_what_callers_expect():
    assert issubclass(NotFoundError, OutputError) and issubclass(NotFoundError, LookupError)
    assert issubclass(SampleIndexError, IndexError) and issubclass(SampleKeyError, KeyError)
    assert str(SampleKeyError("split 'train' has no sample 'x'")) == "split 'train' has no sample 'x'"
    assert issubclass(OutputError, SSMSpineError), "the CLI's exit code 2"


def test_an_unknown_field_is_a_not_found_error_everywhere(converted):
    with pytest.raises(NotFoundError, match="nope"):
        StreamingDataset(converted, fields=("nope",))
    with pytest.raises(NotFoundError, match="nope"):
        ZarrDataset(converted, "train", ("nope",))
    with pytest.raises(NotFoundError, match="nope"):
        open_zarr(converted, "train", ("nope",))
    sample = next(
        iter(webdataset.WebDataset(sorted(map(str, (converted / "wds").glob("train-*.tar"))), shardshuffle=False))
    )
    with pytest.raises(NotFoundError, match="nope"):
        decode_wds_sample(sample, fields=("nope",))


def test_an_unknown_split_is_a_not_found_error_everywhere(converted, capsys):
    for make in (
        lambda: StreamingDataset(converted, split="nope"),
        lambda: ZarrDataset(converted, "nope"),
        lambda: open_zarr(converted, "nope"),
    ):
        with pytest.raises(NotFoundError, match="nope"):
            make()
    assert main(["show", str(converted), "--split", "nope", "-o", str(converted.parent / "x.png")]) == 2
    assert "nope" in capsys.readouterr().err


def test_an_unknown_index_or_key_is_an_index_or_key_error_too(converted):
    ds = ZarrDataset(converted, "train", ("img",))
    with pytest.raises(SampleIndexError, match="out of range"):
        ds[len(ds)]
    with pytest.raises(IndexError):
        ds[-len(ds) - 1]
    with pytest.raises(SampleKeyError, match="patient 99"):
        ds.get(patient=99, aug=1)
    with pytest.raises(KeyError):
        ds.index_of(key="p99_aug001")


def test_show_names_unknown_splits_keys_and_indices_with_the_same_types(converted, tmp_path):
    from pipeline.tools.show import show

    png = tmp_path / "x.png"
    with pytest.raises(NotFoundError, match="nope"):
        show(converted, "nope", path=png)
    with pytest.raises(SampleKeyError, match="p99_aug001"):
        show(converted, "train", key="p99_aug001", path=png)
    with pytest.raises(SampleIndexError, match="out of range"):
        show(converted, "train", index=10**6, path=png)
    with pytest.raises(SampleIndexError, match="out of range"):
        show(converted, "train", index=10**6, from_wds=True, path=png)
