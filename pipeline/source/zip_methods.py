"""Decompressing a zip member's data by its method, to exactly the size it declares, or saying why not.

Deflate goes through zlib-ng (twice zlib's speed: inflating was a third of a sample's conversion
time); Deflate64 (method 9, which 7-Zip and Windows write for large files) through ``inflate64``,
compiled, the only maintained reader of it; bzip2 and LZMA through the standard library. Every
decompressor is held to the same checks: the stream must end, and give exactly the declared size,
never more (a member cannot inflate past it to exhaust memory).
"""

from __future__ import annotations

import bz2
import lzma
import zipfile
from typing import Callable

import inflate64
from zlib_ng import zlib_ng

from pipeline.source.messages import plain

STORED, DEFLATED, DEFLATE64, BZIP2, LZMA = 0, 8, 9, 12, 14
#: Names of the methods a member may declare (APPNOTE 4.4.5), for messages and ``ssmspine scan``.
METHOD_NAMES = {
    STORED: "stored",
    1: "shrunk",
    6: "imploded",
    DEFLATED: "deflate",
    DEFLATE64: "Deflate64",
    BZIP2: "bzip2",
    LZMA: "LZMA",
    93: "zstd",
    95: "xz",
    98: "PPMd",
    99: "WinZip AES",
}
SUPPORTED = (STORED, DEFLATED, DEFLATE64, BZIP2, LZMA)
#: Compressed bytes handed to a decompressor at once where it cannot bound its output itself: at most
#: about 1000 times as many come out of one step of a hostile member (measured: no slower than 1 MiB).
_CHUNK = 1 << 18


class DecompressionError(Exception):
    """A member's data does not decompress to what it declares; the text is the reason."""


def method_name(method: int) -> str:
    return METHOD_NAMES.get(method, f"method {method}")


def decompress(method: int, raw: bytes | memoryview, size: int) -> bytes:
    """``raw`` decompressed by ``method`` to exactly ``size`` bytes, or :class:`DecompressionError`."""
    if method == STORED:
        if len(raw) != size:
            raise DecompressionError(f"is stored, yet its size {size} differs from its stored size {len(raw)}")
        return raw if isinstance(raw, bytes) else bytes(raw)
    if method == DEFLATED:
        inflater = zlib_ng.decompressobj(-15)
        return _bounded(lambda data, most: inflater.decompress(data, most), lambda: inflater.eof, raw, size, "deflate")
    if method == BZIP2:
        inflater = bz2.BZ2Decompressor()
        return _bounded(lambda data, most: inflater.decompress(data, most), lambda: inflater.eof, raw, size, "bzip2")
    if method in (DEFLATE64, LZMA):
        inflater = inflate64.Inflater() if method == DEFLATE64 else zipfile.LZMADecompressor()
        step = inflater.inflate if method == DEFLATE64 else inflater.decompress
        return _chunked(step, lambda: inflater.eof, raw, size, method_name(method))
    raise DecompressionError(f"uses the compression {method_name(method)}, which is not supported")


def _bounded(step: Callable, ended: Callable[[], bool], raw, size: int, name: str) -> bytes:
    """One call of a decompressor that bounds its own output (``max_length``), then the checks."""
    try:
        data = step(raw, size + 1)
    except (zlib_ng.error, OSError, EOFError, ValueError) as exc:  # zlib-ng's error is no zlib.error
        raise DecompressionError(f"its compressed data is not a valid {name} stream ({plain(exc) or name})") from exc
    return _checked(data, ended(), size, name)


def _chunked(step: Callable, ended: Callable[[], bool], raw, size: int, name: str) -> bytes:
    """A decompressor without an output bound, fed a chunk at a time and stopped once past ``size``."""
    view, parts, total = memoryview(raw), [], 0
    try:
        for start in range(0, max(len(view), 1), _CHUNK):
            part = step(bytes(view[start : start + _CHUNK]))
            parts.append(part)
            total += len(part)
            if total > size or ended():
                break
    except (OSError, EOFError, ValueError, lzma.LZMAError) as exc:
        raise DecompressionError(f"its compressed data is not a valid {name} stream ({plain(exc) or name})") from exc
    return _checked(b"".join(parts), ended(), size, name)


def _checked(data: bytes, ended: bool, size: int, name: str) -> bytes:
    if len(data) > size:
        raise DecompressionError(f"inflates to more than the {size} bytes it declares")
    if not ended and len(data) < size:
        reason = f"its {name} stream is cut short: the compressed data ends after {len(data)} of the {size} bytes"
        raise DecompressionError(f"{reason} it declares")
    if not ended:
        raise DecompressionError(f"its {name} stream does not end after the {size} bytes it declares (corrupt)")
    if len(data) < size:
        raise DecompressionError(
            f"inflates to only {len(data)} of the {size} bytes it declares (its stream ends early)"
        )
    return data
