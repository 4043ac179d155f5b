"""The conversion: source members → groups → Dask tasks → shards, then the manifest.

The coordinator lists members (zip central directories only), decodes a couple of samples to fix
the schema and measure encodings, creates the Zarr arrays, and submits one task per group of
consecutive samples of a split (what a task does and why: :mod:`pipeline.convert.task`), then
writes the manifest from the tasks' small records. What a re-run keeps: :mod:`pipeline.convert.resume`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from pipeline.atomic import remove_temporaries
from pipeline.cluster import run_tasks
from pipeline.convert.members import collect_members
from pipeline.convert.options import ConvertOptions, Summary
from pipeline.convert.plan import load_or_make_plan, plan_identity
from pipeline.convert.resume import is_up_to_date, kept_shard, reopen_finished, replace_other_conversion
from pipeline.convert.task import GroupTask, convert_group
from pipeline.errors import SourceError
from pipeline.schema import LABEL_NAMES, schema_to_json
from pipeline.source.members import SourceMember
from pipeline.source.unlock import check_passwords
from pipeline.storage import Storage
from pipeline.store import manifest, progress, tar_shards, zarr_layout, zarr_store
from pipeline.store.manifest import Manifest, MemberName, RejectedMember, ShardEntry, SplitEntry
from pipeline.store.plan import Identity, Plan
from pipeline.store.tar_shards import WDS_DIR
from pipeline.urls import location_name
from pipeline.version import __version__

log = logging.getLogger(__name__)


def _tasks(
    out: Storage, plan: Plan, by_split: Mapping[str, Sequence[SourceMember]], options: ConvertOptions
) -> list[GroupTask]:
    group = plan.group_samples
    return [
        GroupTask(
            out=out,
            split=split,
            index=start // group,
            start=start,
            members=tuple(members[start : start + group]),
            schema=plan.schema,
            encodings=plan.encodings,
            group_samples=group,
            skip_bad=options.skip_bad,
            stored_dtypes=plan.stored_dtypes,
            passwords=options.passwords,
            storage_options=dict(options.storage_options or {}),
        )
        for split, members in by_split.items()
        for start in range(0, len(members), group)
    ]


def _create_zarr(out: Storage, plan: Plan, by_split: Mapping[str, Sequence[SourceMember]]) -> None:
    for split, members in by_split.items():
        zarr_store.create_split(
            out,
            split,
            plan.stored_schema,
            plan.encodings,
            patients=np.array([m.patient for m in members]),
            augs=np.array([m.aug for m in members]),
            shard_samples=plan.group_samples,
            source_dtypes={f: plan.schema[f].dtype for f in plan.stored_dtypes},
            attributes={
                "fields": list(plan.schema),
                "label_names": {str(k): v for k, v in LABEL_NAMES.items()},
                "schema": schema_to_json(plan.schema),
                "stored_dtypes": dict(plan.stored_dtypes),
                "sources": [s.to_json() for s in plan.identity.sources],
            },
        )


def _build_manifest(
    plan: Plan,
    by_split: Mapping[str, Sequence[SourceMember]],
    entries: Sequence[ShardEntry],
    rejected: Sequence[RejectedMember],
) -> Manifest:
    splits = {}
    for split, members in by_split.items():
        shards = sorted((e for e in entries if e.split == split), key=lambda e: e.index)
        by_key = {m.key: m for m in members}
        converted = [by_key[key] for shard in shards for key in shard.keys]
        splits[split] = SplitEntry(
            keys=[m.key for m in converted],
            rows=[row for shard in shards for row in shard.rows],
            patient=[m.patient for m in converted],
            aug=[m.aug for m in converted],
            members=[MemberName(location_name(m.archive), m.member) for m in converted],
            shards=shards,
            warnings={key: found for shard in shards for key, found in shard.warnings.items()},
        )
    return Manifest(
        plan=plan,
        splits=splits,
        rejected=tuple(rejected),
        tool_version=__version__,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        label_names={str(k): v for k, v in LABEL_NAMES.items()},
        zarr=zarr_layout.STORE_NAME,
        wds_dir=WDS_DIR,
        member_suffix=tar_shards.EXTENSION,
    )


def convert(
    sources: Sequence[str | os.PathLike], out: str | os.PathLike, options: ConvertOptions = ConvertOptions()
) -> Summary:
    """Convert SSMSpine source archives (paths, or URLs read in place) or extracted directories into
    ``out``, a local directory or any fsspec URL (``s3://bucket/prefix``; see :mod:`pipeline.storage`).

    Resumable: re-running after an interruption converts only the missing shards; re-running
    on a finished output does no work. See :class:`ConvertOptions` for bad input and ``force``.
    """
    started = time.perf_counter()
    sources = [os.fspath(s) for s in sources]
    check_passwords(
        sources, options.passwords, options.storage_options
    )  # a wrong or missing password: before anything is written
    out = Storage(out, options.storage_options)
    out.check_writable()  # a missing bucket, no credentials, a read-only prefix: before any work
    by_split, rejected = collect_members(sources, options)
    if not by_split:
        raise SourceError(", ".join(sources), None, "no sample could be listed")
    identity = plan_identity(sources, by_split, options)
    if options.force:
        replace_other_conversion(out, identity)
    if is_up_to_date(out, identity):
        run = Run(manifest.read_manifest(out), up_to_date=True)
    else:
        run = _convert_missing(out, identity, by_split, rejected, options, started)
    done = run.manifest
    return Summary(
        samples=sum(entry.samples for entry in done.splits.values()),
        source_bytes=sum(s.bytes for s in identity.sources),
        zarr_bytes=out.tree_bytes(zarr_layout.STORE_NAME),
        wds_bytes=out.tree_bytes(WDS_DIR),
        seconds=time.perf_counter() - started,
        planning_seconds=run.planning_seconds,
        startup_seconds=run.startup_seconds,
        shards_written=run.shards_written,
        shards_kept=run.shards_kept,
        samples_written=run.samples_written,
        up_to_date=run.up_to_date,
        splits={split: entry.samples for split, entry in done.splits.items()},
        rejected=list(done.rejected),
        warnings={key: list(found) for entry in done.splits.values() for key, found in entry.warnings.items()},
    )


@dataclass(frozen=True)
class Run:
    """What converting the missing shards did: the manifest written (or found), and the counts and
    times the summary reports."""

    manifest: Manifest
    up_to_date: bool = False
    planning_seconds: float = 0.0
    startup_seconds: float = 0.0
    shards_kept: int = 0
    shards_written: int = 0
    samples_written: int = 0


def _convert_missing(
    out: Storage,
    identity: Identity,
    by_split: Mapping[str, Sequence[SourceMember]],
    rejected: list[RejectedMember],
    options: ConvertOptions,
    started: float,
) -> Run:
    """Plan (or reuse the plan), run the tasks whose shards are missing, write the manifest."""
    if manifest.has_manifest(out):
        reopen_finished(out)
    if not out.remote:  # object stores have no folders, and never hold a half-written object
        out.local_path(WDS_DIR).mkdir(parents=True, exist_ok=True)
        remove_temporaries(out.root)
    plan = load_or_make_plan(out, identity, by_split, options)
    _create_zarr(out, plan, by_split)
    tasks = _tasks(out, plan, by_split, options)
    planning_seconds = time.perf_counter() - started
    recorded = {(e.split, e.index): e for e in progress.recorded_shards(out)}
    kept = {(t.split, t.index): m for t in tasks if (m := kept_shard(t, recorded.get((t.split, t.index))))}
    todo = [t for t in tasks if (t.split, t.index) not in kept]
    written, startup_seconds = _run(todo, options)
    entries = [*kept.values(), *written]
    rejected = [*rejected, *(r for entry in entries for r in entry.rejected)]
    if not out.remote:
        remove_temporaries(out.root)  # those of workers that died mid-task and had their task rerun
    if rejected:
        progress.write_json(out, manifest.REJECTED_NAME, [r.to_json() for r in rejected])
    done = _build_manifest(plan, by_split, entries, rejected)
    manifest.write_manifest(out, done)
    out.remove_tree(progress.PROGRESS_DIR)
    return Run(
        manifest=done,
        planning_seconds=planning_seconds,
        startup_seconds=startup_seconds,
        shards_kept=len(kept),
        shards_written=len(todo),
        samples_written=sum(len(t.members) for t in todo),
    )


def _run(tasks: Sequence[GroupTask], options: ConvertOptions) -> tuple[list[ShardEntry], float]:
    """Run tasks on Dask; return their results and the seconds spent starting the cluster."""
    return run_tasks(
        convert_group,
        tasks,
        scheduler=options.scheduler,
        workers=options.workers,
        sizes=[len(t.members) for t in tasks],
        size_of=lambda entry: entry.samples + len(entry.rejected),
        desc="converting",
        progress=options.progress,
    )
