"""SSMSpine shards: convert the SSMSpine lumbar-spine MRI archives into Zarr and WebDataset shards."""

from pipeline.errors import OutputError, SchemaError, SourceError, SSMSpineError, UnavailableError
from pipeline.schema import FIELDS, LABEL_NAMES
from pipeline.store.tar_shards import decode_wds_sample
from pipeline.version import __version__

__all__ = [
    "DistributedSampler",
    "FIELDS",
    "LABEL_NAMES",
    "OutputError",
    "SampleRecord",
    "SchemaError",
    "SourceError",
    "Source",
    "SSMSpineError",
    "StreamingDataLoader",
    "StreamingDataset",
    "UnavailableError",
    "__version__",
    "ZarrDataset",
    "decode_wds_sample",
    "open_zarr",
    "to_device",
]

#: Readers import torch, zarr and xarray: load them on first use, so `import pipeline` stays light.
_LAZY = {
    "DistributedSampler": "read.samplers",
    "StreamingDataLoader": "read.stream",
    "SampleRecord": "read.subsets",
    "Source": "read.stream.sources",
    "StreamingDataset": "read.stream",
    "ZarrDataset": "read.zarr_dataset",
    "open_zarr": "tools.xarray_view",
    "to_device": "read.device",
}


def __getattr__(name: str):  # PEP 562
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
