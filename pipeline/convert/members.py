"""The members of all sources by split, and the record of a member left out under ``--skip-bad``."""

from __future__ import annotations

import logging
from typing import Sequence

from pipeline.convert.options import ConvertOptions
from pipeline.errors import SourceError
from pipeline.source.members import SourceMember, list_members
from pipeline.store.manifest import RejectedMember

log = logging.getLogger(__name__)


def rejection(error: SourceError, member: SourceMember | None = None) -> RejectedMember:
    """The record of a member left out under ``--skip-bad`` (``DIR/rejected.json``)."""
    return RejectedMember(
        archive=error.archive,
        member=error.member or (member.member if member else None),
        key=member.key if member else None,
        split=member.split if member else None,
        reason=error.reason,
    )


def collect_members(
    sources: Sequence[str], options: ConvertOptions
) -> tuple[dict[str, list[SourceMember]], list[RejectedMember]]:
    """Members of all sources by split (validation patients moved to ``val``), and rejections.

    A name outside the layout, or a key that another archive already provides, stops here,
    before anything is written; with ``skip_bad`` it is rejected and the rest goes on.
    """
    by_split: dict[str, list[SourceMember]] = {}
    seen: dict[tuple[str, str], SourceMember] = {}
    rejected: list[RejectedMember] = []
    on_bad = (lambda error: rejected.append(rejection(error))) if options.skip_bad else None
    for src in sources:
        for member in list_members(src, options.split, on_bad=on_bad, storage_options=options.storage_options):
            if member.patient in options.val_patients and member.split == "train":
                member = SourceMember("val", member.patient, member.aug, member.archive, member.member, member.root)
            previous = seen.setdefault((member.split, member.key), member)
            if previous is not member:
                error = SourceError(
                    member.archive,
                    member.member,
                    f"sample {member.key} of split {member.split!r} "
                    f"also comes from {previous.archive}: {previous.member}",
                )
                if not options.skip_bad:
                    raise error
                rejected.append(rejection(error, member))
                continue
            by_split.setdefault(member.split, []).append(member)
    for split_members in by_split.values():
        split_members.sort()
    return dict(sorted(by_split.items())), rejected
