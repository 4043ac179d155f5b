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
    "decode_wds_sample",
]
