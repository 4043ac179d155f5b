"""Safe decoding of one ``.pt`` file into a record: ``torch.load(weights_only=True)`` with an allow-list.

The allow-list holds exactly the numpy globals that numpy-valued files name. Nothing is ever
unpickled without that restriction: the archives come from the internet, and a pickle can run
arbitrary code. Both of torch's formats load: the zip format (torch >= 1.6) and the legacy one.
"""

from __future__ import annotations

import io
import pickle
from functools import lru_cache
from typing import Mapping

import numpy as np
import torch
from numpy._core.multiarray import _reconstruct

from pipeline.errors import SourceError
from pipeline.schema import STORABLE_KINDS
from pipeline.source.messages import describe, plain, printable
from pipeline.source.pickle_scan import ZIP_MAGIC, pickle_globals

PICKLE_MAGIC = b"\x80"  # protocol 2+ pickle: torch's legacy format

_NUMPY_DTYPE_CLASSES = [
    getattr(np.dtypes, name)
    for name in (
        "BoolDType",
        "Int8DType",
        "Int16DType",
        "Int32DType",
        "Int64DType",
        "UInt8DType",
        "UInt16DType",
        "UInt32DType",
        "UInt64DType",
        "Float16DType",
        "Float32DType",
        "Float64DType",
        "ByteDType",
        "UByteDType",
        "ShortDType",
        "UShortDType",
        "IntDType",
        "UIntDType",
        "LongDType",
        "ULongDType",
        "LongLongDType",
        "ULongLongDType",
    )
    if hasattr(np.dtypes, name)
]


#: The only globals a numpy-valued sample file may name. Files pickled under numpy 1.x name the
#: array constructor ``numpy.core.multiarray._reconstruct``, under numpy 2.x ``numpy._core...``;
#: both resolve to the same function. The dtype classes are needed to rebuild dtypes under numpy 2.
SAFE_GLOBALS: list = [
    (_reconstruct, "numpy.core.multiarray._reconstruct"),
    (_reconstruct, "numpy._core.multiarray._reconstruct"),
    np.ndarray,
    np.dtype,
    *_NUMPY_DTYPE_CLASSES,
]


def decode_sample(data: bytes, archive: str, member: str) -> dict[str, np.ndarray]:
    """Safely unpickle one ``.pt`` file into ``{field: numpy array}`` in the source dtypes.

    Both of torch's formats load: the zip format (torch >= 1.6) and the legacy one (pickles back
    to back), always through torch's weights-only unpickler with our numpy allow-list.
    """
    if not data:
        raise SourceError(archive, member, "is empty")
    if not data.startswith((ZIP_MAGIC, PICKLE_MAGIC)):
        raise SourceError(archive, member, "is not a torch file (neither torch's zip format nor a legacy pickle)")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise SourceError(archive, member, _refusal_reason(data, exc)) from exc
    except MemoryError:
        raise
    except Exception as exc:  # torch raises RuntimeError, EOFError, struct.error, ... for damaged files
        raise SourceError(archive, member, f"is not a readable torch file ({describe(exc)})") from exc
    if not isinstance(obj, Mapping):
        raise SourceError(archive, member, f"holds a {type(obj).__name__}, not a dict of arrays")
    return {str(field): to_numpy(value, archive, member, str(field)) for field, value in obj.items()}


def _refusal_reason(data: bytes, exc: Exception) -> str:
    """Why the safe unpickler refused ``data``: the globals it asks for beyond the allow-list, if any.

    The globals are found by reading the pickle's opcodes, never by running it. torch's own
    message is passed on only as :func:`_plain` leaves it: torch advises retrying with full
    unpickling, which for a downloaded file is exactly what must never be done.
    """
    unsafe = sorted(pickle_globals(data) - _allowed_global_names())
    if unsafe:
        shown = ", ".join(printable(name) for name in unsafe[:10]) + (", ..." if len(unsafe) > 10 else "")
        return (
            f"refused: the pickle asks for globals outside the allow-list [{shown}]; "
            "loading it could run code, so it was not loaded"
        )
    return f"refused by the safe unpickler: {plain(exc) or type(exc).__name__}"


@lru_cache(maxsize=1)
def _allowed_global_names() -> frozenset[str]:
    """``module.name`` of every global the weights-only unpickler accepts with our allow-list."""
    from torch import _weights_only_unpickler as unpickler  # no public API lists torch's defaults

    with torch.serialization.safe_globals(SAFE_GLOBALS):
        names = set(getattr(unpickler, "_get_user_allowed_globals", dict)())
    return frozenset(names | set(getattr(unpickler, "_get_allowed_globals", dict)()))


def to_numpy(value: object, archive: str, member: str, field: str) -> np.ndarray:
    """A numpy array with the same dtype, shape and bytes as a tensor or array field value."""
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bfloat16 or value.is_complex():
            raise SourceError(archive, member, f"field {field!r} has dtype {value.dtype}, which numpy cannot hold")
        array = value.detach().cpu().resolve_conj().resolve_neg().contiguous().numpy()
    elif isinstance(value, np.ndarray):
        array = value
    else:
        raise SourceError(archive, member, f"field {field!r} is a {type(value).__name__}, not an array")
    if array.dtype.kind not in STORABLE_KINDS:
        raise SourceError(archive, member, f"field {field!r} has dtype {array.dtype}, not a numeric or bool dtype")
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return np.ascontiguousarray(array)
