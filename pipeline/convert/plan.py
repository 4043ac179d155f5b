"""The plan of a conversion: decode a few samples to fix the schema, choose encodings and size the shards.

Encodings are chosen by timing, so the plan is recorded (``DIR/.progress/plan.json``) and a resumed
run reuses it; its identity (sources, splits, shard size, fixed encodings, narrowing, what measured
encodings favour) says whether it may.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from pipeline.convert.options import ConvertOptions
from pipeline.errors import OutputError, SourceError, UsageError
from pipeline.narrowing import choose_stored_dtypes
from pipeline.schema import check_sample, schema_from_sample
from pipeline.source.members import SourceMember, fingerprint
from pipeline.source.zip_reader import Readers
from pipeline.store.codecs import choose_encodings, measure
from pipeline.store.plan import Identity, Plan, SourceRecord
from pipeline.store.progress import read_plan, write_plan
from pipeline.store.tar_shards import TAR_MEMBER_OVERHEAD

log = logging.getLogger(__name__)


#: Shards per split at least (when it has that many samples): tasks enough to share out.
MIN_SHARDS = 8


def _calibrate(
    identity: Identity, members: Sequence[SourceMember], largest_split: int, options: ConvertOptions
) -> Plan:
    """Decode a few samples: fix the schema, choose encodings and stored dtypes, size the shards.

    A shard holds ``shard_bytes`` worth of samples, but never more than 1/:data:`MIN_SHARDS` of
    the largest split, so that a small archive still makes enough tasks for every worker.
    """
    calibration, samples = _calibration_samples(members, options)
    schema = schema_from_sample(samples[0], calibration[0].archive, calibration[0].member)
    for member, sample in zip(calibration[1:], samples[1:]):
        check_sample(sample, schema, member.archive, member.member)
    stored = choose_stored_dtypes(schema, samples) if identity.narrow_dtypes else {}
    samples = [{f: a.astype(stored[f]) if f in stored else a for f, a in s.items()} for s in samples]
    if options.encodings is None:
        choices = choose_encodings(samples, identity.prefer)
    else:
        missing = sorted(set(schema) - set(options.encodings))
        if missing:
            raise UsageError(f"encodings given for {sorted(options.encodings)}, but not for the field(s) {missing}")
        choices = {f: measure([s[f] for s in samples], options.encodings[f]) for f in schema}
    encoded_per_sample = sum(m.nbytes for m in choices.values()) / len(samples)
    encoded_per_sample += TAR_MEMBER_OVERHEAD * len(schema)
    group = max(1, min(int(options.shard_bytes // encoded_per_sample), math.ceil(largest_split / MIN_SHARDS)))
    return Plan(
        identity=identity,
        schema=schema,
        encodings={f: m.encoding for f, m in choices.items()},
        encoded_ratio={f: m.nbytes / sum(s[f].nbytes for s in samples) for f, m in choices.items()},
        group_samples=group,
        stored_dtypes=stored,
    )


def _calibration_samples(
    members: Sequence[SourceMember], options: ConvertOptions
) -> tuple[list[SourceMember], list[dict[str, np.ndarray]]]:
    """The first ``calibration_samples`` members that decode, in split order (any member, without
    ``skip_bad``; with it, a split of bad members only does not stop the others).

    A bad member skipped here is rejected properly by its task later.
    """
    chosen, samples = [], []
    with Readers(options.passwords, options.storage_options) as readers:
        for member in members:
            try:
                sample = readers.read_sample(member.archive, member.member)
                schema_from_sample(sample, member.archive, member.member)
            except SourceError:
                if not options.skip_bad:
                    raise
                continue
            chosen.append(member)
            samples.append(sample)
            if len(samples) == options.calibration_samples:
                break
    if not samples:
        raise SourceError(", ".join(sorted({m.archive for m in members})), None, "no member could be decoded")
    return chosen, samples


def plan_identity(
    sources: Sequence[str], by_split: Mapping[str, Sequence[SourceMember]], options: ConvertOptions
) -> Identity:
    """This run's :class:`~pipeline.store.plan.Identity` (what must match for a re-run to reuse earlier
    output: see there). Only fixed encodings enter it: measuring encodings again never changes it."""
    return Identity(
        sources=tuple(SourceRecord(**fingerprint(s, options.storage_options)) for s in sources),
        splits={split: tuple(m.key for m in members) for split, members in by_split.items()},
        shard_bytes=options.shard_bytes,
        encodings=dict(sorted(options.encodings.items())) if options.encodings is not None else None,
        narrow_dtypes=not options.keep_dtypes,
        prefer=options.prefer,
    )


def load_or_make_plan(
    out: Path, identity: Identity, by_split: Mapping[str, Sequence[SourceMember]], options: ConvertOptions
) -> Plan:
    """The plan of an earlier run into ``out`` if it converts the same thing, else a new one.

    Encodings are chosen by timing, so a re-run must reuse the recorded choice rather than
    measure again: otherwise resumed shards could differ from the kept ones.
    """
    plan = read_plan(out)
    if plan is not None:
        if plan.identity != identity:
            raise OutputError(
                f"{out} holds an unfinished conversion of other sources or options; "
                "choose another --out, or use --force to replace it"
            )
        return plan
    largest = max(map(len, by_split.values()))
    every_member = [member for members in by_split.values() for member in members]
    plan = _calibrate(identity, every_member, largest, options)
    write_plan(out, plan)
    return plan
