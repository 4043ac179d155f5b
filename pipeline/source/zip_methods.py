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
import struct
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
#: Compressed bytes handed to ``inflate64`` at once, since it cannot bound its output itself: Deflate64's
#: long matches let 4 KiB of a hostile member inflate to about 100 MB in one step (26,000x, measured
#: on zeros), never more; and 4 KiB steps inflate a real member as fast as 256 KiB ones (measured).
_CHUNK = 1 << 12
#: The header zip puts before an LZMA member's raw stream (APPNOTE 5.8.8): version, properties' size.
_LZMA_HEADER = struct.Struct("<BBH")


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
    if method == LZMA:
        inflater, stream = _lzma_decompressor(raw)
        return _bounded(lambda data, most: inflater.decompress(data, most), lambda: inflater.eof, stream, size, "LZMA")
    if method == DEFLATE64:
        inflater = inflate64.Inflater()
        return _chunked(inflater.inflate, lambda: inflater.eof, raw, size, "Deflate64")
    raise DecompressionError(f"uses the compression {method_name(method)}, which is not supported")


def _bounded(step: Callable, ended: Callable[[], bool], raw, size: int, name: str) -> bytes:
    """One call of a decompressor that bounds its own output (``max_length``), then the checks."""
    try:
        data = step(raw, size + 1)
    except (zlib_ng.error, OSError, EOFError, ValueError, lzma.LZMAError) as exc:  # zlib-ng's is no zlib.error
        raise DecompressionError(f"its compressed data is not a valid {name} stream ({plain(exc) or name})") from exc
    return _checked(data, ended(), size, name)


def _chunked(step: Callable, ended: Callable[[], bool], raw, size: int, name: str) -> bytes:
    """A decompressor without an output bound, fed a chunk at a time and stopped once past ``size``."""
    view, parts, total = memoryview(raw), [], 0
    try:
        for start in range(0, max(len(view), 1), _CHUNK):
            part = step(bytes(view[start : start + _CHUNK]))
            total += len(part)
            if total > size:  # said at once: joining what came out would copy a bomb's output again
                raise DecompressionError(f"inflates to more than the {size} bytes it declares")
            parts.append(part)
            if ended():
                break
    except (OSError, EOFError, ValueError) as exc:
        raise DecompressionError(f"its compressed data is not a valid {name} stream ({plain(exc) or name})") from exc
    return _checked(b"".join(parts), ended(), size, name)


def _lzma_decompressor(raw) -> tuple[lzma.LZMADecompressor, memoryview]:
    """A raw LZMA1 decompressor for a zip member (which ``max_length`` bounds), and the stream after
    the member's header: zip stores the LZMA properties before it, not in an ``.lzma`` header."""
    view = memoryview(raw)
    if len(view) < _LZMA_HEADER.size:
        raise DecompressionError("is too short for its LZMA header (truncated)")
    _, _, length = _LZMA_HEADER.unpack_from(view)
    properties = bytes(view[_LZMA_HEADER.size : _LZMA_HEADER.size + length])
    if length != 5 or len(properties) != 5 or properties[0] >= 9 * 5 * 5:
        raise DecompressionError("its LZMA header is damaged (properties)")
    literal_context, rest = properties[0] % 9, properties[0] // 9
    dictionary = int.from_bytes(properties[1:5], "little")
    lzma1 = {"id": lzma.FILTER_LZMA1, "dict_size": dictionary, "lc": literal_context, "lp": rest % 5, "pb": rest // 5}
    try:
        return lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[lzma1]), view[_LZMA_HEADER.size + length :]
    except (lzma.LZMAError, ValueError) as exc:
        raise DecompressionError(f"its LZMA header is damaged ({plain(exc) or 'properties'})") from exc


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
