"""SSMSpine shards: convert the SSMSpine lumbar-spine MRI archives into Zarr and WebDataset shards."""

__version__ = "0.1.0"

from .schema import FIELDS, LABEL_NAMES, OutputError, SchemaError, SourceError, SSMSpineError  # noqa: E402
from .tar_shards import decode_wds_sample  # noqa: E402

__all__ = [
    "FIELDS",
    "LABEL_NAMES",
    "OutputError",
    "SchemaError",
    "SourceError",
    "SSMSpineError",
    "StreamingDataset",
    "ZarrDataset",
    "decode_wds_sample",
    "open_zarr",
]

#: Readers import torch, zarr and xarray: load them on first use, so `import pipeline` stays light.
_LAZY = {"StreamingDataset": "stream", "ZarrDataset": "random_access", "open_zarr": "random_access"}


def __getattr__(name: str):  # PEP 562
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
