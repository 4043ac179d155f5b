"""Verification of a whole output: one task per shard on Dask, and the report."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from pipeline.cluster import run_tasks
from pipeline.errors import OutputError
from pipeline.source.passwords import NO_PASSWORDS, Passwords
from pipeline.storage import Storage
from pipeline.store import manifest
from pipeline.store.manifest import MemberName
from pipeline.urls import location_name
from pipeline.verify.compare import Problem, VerifyTask, verify_shard


@dataclass
class Report:
    """What ``verify`` found, and how long it took (as the conversion's summary reports it)."""

    samples: int
    shards: int
    problems: list[Problem]
    against: str  # "sources" or "manifest"
    seconds: float = 0.0  # running the tasks, the cluster's start-up included
    startup_seconds: float = 0.0  # starting (or connecting to) the Dask cluster, workers' imports

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def checking_seconds(self) -> float:
        """Wall time of the tasks alone: without reading the manifest and the cluster's start-up."""
        return self.seconds - self.startup_seconds

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.checking_seconds if self.samples and self.checking_seconds > 0 else 0.0


def verify_tasks(
    out: Storage, sources: Sequence[str | os.PathLike] | None, passwords: Passwords = NO_PASSWORDS
) -> list[VerifyTask]:
    """One task per shard; with ``sources``, each key is mapped to its member in them (those at URLs
    read with the output's ``storage_options``: one mapping for all, each URL taking its own)."""
    done = manifest.read_manifest(out)
    by_name = {location_name(os.fspath(s)): os.fspath(s) for s in sources or ()}
    tasks = []
    for split, entry in done.splits.items():
        members_of = dict(zip(entry.keys, (_locate(by_name, m) for m in entry.members))) if sources else None
        for shard in entry.shards:
            tasks.append(
                VerifyTask(
                    out=out,
                    split=split,
                    shard=shard,
                    schema=done.schema,
                    stored_schema=done.stored_schema,
                    chunks_per_shard=done.plan.group_samples,
                    members=tuple(members_of[k] for k in shard.keys) if members_of is not None else None,
                    passwords=passwords,
                    storage_options=out.storage_options if sources else {},
                )
            )
    return tasks


def _locate(by_name: Mapping[str, str], member: MemberName) -> tuple[str, str]:
    try:
        return by_name[member.archive], member.member
    except KeyError:
        raise OutputError(
            f"the output was converted from {member.archive}, which is not among the sources given ({sorted(by_name)})"
        ) from None


def verify(
    out: str | os.PathLike,
    sources: Sequence[str | os.PathLike] | None = None,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    passwords: Passwords = NO_PASSWORDS,
) -> Report:
    """Check every sample of ``out`` (a directory or any fsspec URL) in both formats, bit for bit.
    See the module docstring. ``passwords`` open encrypted sources (checked before any task runs);
    ``storage_options`` reach the output and the sources at URLs (flat keys for every URL, a
    protocol's section for its URLs only: :func:`~pipeline.io.filesystems.options_for`)."""
    if sources:  # imported only here: checking against the manifest never loads torch
        from pipeline.source.unlock import check_passwords

        check_passwords([os.fspath(s) for s in sources], passwords, storage_options)
    tasks = verify_tasks(Storage(out, storage_options), sources, passwords)
    listed = time.perf_counter()
    results, startup = run_tasks(
        verify_shard,
        tasks,
        scheduler=scheduler,
        workers=workers,
        sizes=[t.shard.samples for t in tasks],
        size_of=lambda result: result[0],
        desc="verifying",
        progress=progress,
        preload=("pipeline.source.zip_reader",) if sources else (),
    )
    return Report(
        samples=sum(checked for checked, _ in results),
        shards=len(tasks),
        problems=[problem for _, found in results for problem in found],
        against="sources" if sources else "manifest",
        seconds=time.perf_counter() - listed,
        startup_seconds=startup,
    )
