"""Both readers are called alike: ``(root, split, fields, *, ...)``, one name per option, ``storage_options``
included; a renamed argument still works for a while, with a warning naming the new one."""

from __future__ import annotations

import inspect
import warnings

import pytest

from pipeline import StreamingDataset, ZarrDataset
from pipeline.errors import UsageError

#: Options both readers take, under the same names.
SHARED_OPTIONS = {"seed", "decode_threads", "transform", "compact", "storage_options"}


def _parameters(reader) -> list[inspect.Parameter]:
    return list(inspect.signature(reader.__init__).parameters.values())[1:]


@pytest.mark.parametrize("reader", [StreamingDataset, ZarrDataset])
def test_both_readers_take_root_split_fields_and_then_keywords_only(reader):
    parameters = _parameters(reader)
    assert [p.name for p in parameters[:3]] == ["root", "split", "fields"]
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in parameters[:3])
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters[3:]), [p.name for p in parameters[3:]]
    assert SHARED_OPTIONS <= {p.name for p in parameters}


def test_zarr_datasets_out_is_renamed_root_with_a_warning(converted):
    with pytest.warns(DeprecationWarning, match=r"ZarrDataset\(out=\.\.\.\) is renamed root="):
        old = ZarrDataset(out=converted, split="test", fields=("label",))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = ZarrDataset(converted, "test", ("label",))
    assert old.root == new.root and old.keys == new.keys
    with pytest.raises(UsageError, match="not both"):
        ZarrDataset(converted, out=converted)
    with pytest.raises(UsageError, match="needs root"):
        ZarrDataset()


def test_options_after_fields_are_keyword_only(converted):
    with pytest.raises(TypeError):
        StreamingDataset(converted, "test", ("label",), False)  # shuffle, positionally
    streaming = StreamingDataset(converted, "test", ("label",), shuffle=False)
    assert list(streaming.keys) == list(ZarrDataset(converted, "test").keys)
