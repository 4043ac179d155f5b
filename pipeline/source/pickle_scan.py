"""The globals a torch file's pickles name, found by reading opcodes, never by running them.

Used to say precisely why a file was refused (the globals it asks for beyond the allow-list),
for both of torch's formats; ``torch.serialization.get_unsafe_globals_in_checkpoint`` knows only
the zip format and only the ``GLOBAL`` opcode.
"""

from __future__ import annotations

import io
import pickletools
import zipfile

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip archive
#: torch's legacy format is pickles back to back (magic number, protocol, sys info, the object,
#: its storage keys), then raw storage bytes that are no pickle at all.
LEGACY_PICKLES = 5


def pickle_globals(data: bytes) -> set[str]:
    """``module.name`` of every global the pickle(s) of a torch file name, found without unpickling.

    For the zip format that is ``data.pkl``; the legacy format is several pickles back to back
    (magic number, protocol, sys info, the object, its storage keys), all of which name globals
    only through opcodes. Damage stops the scan: what was found before it is returned.
    """
    if data.startswith(ZIP_MAGIC):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                record = next(n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl"))
                stream, count = io.BytesIO(archive.read(record)), 1
        except Exception:  # a damaged torch zip: nothing to scan
            return set()
    else:
        stream, count = io.BytesIO(data), LEGACY_PICKLES
    found: set[str] = set()
    for _ in range(count):
        if stream.tell() >= len(stream.getbuffer()) or not _scan_pickle(stream, found):
            break
    return found


_STRING_OPCODES = frozenset(
    {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
)
_MARK = object()


def _scan_pickle(stream: io.BytesIO, found: set[str]) -> bool:
    """Add the globals one pickle in ``stream`` names to ``found``; True if it read to its STOP.

    ``GLOBAL`` and ``INST`` carry the name in their argument; ``STACK_GLOBAL`` (protocol 4+)
    takes it from the two strings on top of the stack, which may come from the memo, so the
    scan keeps a shadow stack and memo of string values, moved as each opcode documents.
    """
    stack: list = []
    memo: dict[int, object] = {}
    try:
        for opcode, arg, _ in pickletools.genops(stream):
            name = opcode.name
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                found.add(f"{module}.{attr}")
            elif name == "STACK_GLOBAL":
                attr = stack.pop() if stack else None
                module = stack.pop() if stack else None
                named = isinstance(module, str) and isinstance(attr, str)
                found.add(f"{module}.{attr}" if named else "<a global named by computed strings>")
                stack.append(None)
                continue
            elif name in ("EXT1", "EXT2", "EXT4"):
                found.add(f"<copyreg extension {arg}>")
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1] if stack else None
                continue
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1] if stack else None
                continue
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(arg))
                continue
            elif name == "MARK":
                stack.append(_MARK)
                continue
            for item in reversed(opcode.stack_before):
                if item is pickletools.stackslice:
                    while stack and stack[-1] is not _MARK:
                        stack.pop()
                elif stack:
                    stack.pop()
            pushed = arg if name in _STRING_OPCODES and isinstance(arg, str) else None
            stack.extend([pushed] * len(opcode.stack_after))
            if name == "STOP":
                return True
    except Exception:  # damaged or truncated: stop here
        return False
    return False
