"""Reasons for a refusal, as one plain line: what torch or zipfile said, without their advice.

torch's refusal of an unsafe pickle advises retrying with full unpickling, which for a downloaded
file is exactly what must never be done; its messages also run to paragraphs. Everything we pass on
from another library goes through :func:`plain`.
"""

from __future__ import annotations

import re
import sys

#: Reasons are one line; torch's messages run to paragraphs.
MAX_DETAIL = 300

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: Sentences of torch's messages that advise loosening the unpickler or point at docs: never ours.
_ADVICE = re.compile(
    r"weights.only|trust|allowlist|safe_globals|file an issue|documentation|two options", re.IGNORECASE
)


def plain(error: BaseException | str) -> str:
    """One plain line (maybe empty) from an exception's text, without torch's advice to load unsafely.

    torch wraps unpickling errors in paragraphs that recommend re-running ``torch.load`` with
    ``weights_only`` off, or allow-listing whatever global a file names. Passing that on to a
    user converting files from the internet would be dangerous advice, so every sentence that
    mentions it is dropped; what is left is the specific cause (``Unsupported operand 149``).
    """
    text = _ANSI.sub("", str(error))
    torch = sys.modules.get("torch")  # its advice can only be in the text if torch raised it
    if torch is not None:
        text = text.replace(getattr(torch.serialization, "UNSAFE_MESSAGE", "\0"), " ")
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    sentences = re.split(r"(?<=[.!?])\s+|\n+|\t+", text)
    kept = [s.strip() for s in sentences if s.strip() and not _ADVICE.search(s)]
    line = " ".join(" ".join(kept).split())
    if len(line) > MAX_DETAIL:
        line = line[: MAX_DETAIL - 3] + "..."
    return line


def describe(error: BaseException) -> str:
    """``Type: plain detail`` of an exception, for reasons that pass on what a library said."""
    detail = plain(error)
    return f"{type(error).__name__}: {detail}" if detail else type(error).__name__


def printable(name: str) -> str:
    """A name as a file gives it, made safe for a one-line message (it is attacker-chosen)."""
    return re.sub(r"[^\w.<>/ -]", "?", name)[:100]
