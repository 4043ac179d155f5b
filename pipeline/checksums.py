"""The digests a conversion records and ``verify`` recomputes: xxh3-128 of arrays, sha256 of files."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import xxhash


def digest(array: np.ndarray) -> str:
    """128-bit digest of an array's bytes (dtype and shape are checked by the schema)."""
    return xxhash.xxh3_128_hexdigest(memoryview(np.ascontiguousarray(array)).cast("B"))


def frame_digest(frame: bytes | memoryview) -> str:
    """128-bit digest of an encoded (Blosc) frame."""
    return xxhash.xxh3_128_hexdigest(frame)


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, read piece by piece (a shard is up to a few hundred MB)."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()
