"""Bit-exact verification of a converted output, against its sources or its own manifest.

With sources, every sample is decoded from the archive again and compared field by field
(dtype, shape and bytes) with what the tar shards and the Zarr store return. Without sources,
the same reads are compared with the manifest's per-field digests, which were computed from
the decoded sources during conversion. Either way, the tar files must also match their recorded
size and sha256. Work is split per shard and runs on Dask like the conversion.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from . import manifest, source, tar_shards, zarr_store
from .cluster import run_tasks
from .convert import digest
from .manifest import ShardMeta
from .schema import FieldSpec, OutputError, SSMSpineError, schema_from_json, spec_of


#: Zarr rows read at once: bounds memory (~10 MB a sample) while amortising per-read overhead.
ROWS_PER_READ = 8


@dataclass(frozen=True)
class Problem:
    """One difference between an output and what it should hold."""

    split: str
    where: str  # shard file, or "<format>:<key>.<field>"
    what: str

    def __str__(self) -> str:
        return f"[{self.split}] {self.where}: {self.what}"


@dataclass(frozen=True)
class VerifyTask:
    out: str
    split: str
    shard: ShardMeta
    schema: dict
    members: tuple[tuple[str, str], ...] | None  # (archive path, member) per key, or None


@dataclass
class Report:
    samples: int
    shards: int
    problems: list[Problem]
    against: str  # "sources" or "manifest"

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_shard(task: VerifyTask) -> tuple[int, list[Problem]]:
    """Compare one tar shard and its Zarr rows with the sources (or the manifest digests)."""
    shard, schema = task.shard, schema_from_json(task.schema)
    path = Path(task.out) / shard.file
    problems = _check_file(task.split, path, shard)
    if problems:
        return 0, problems
    try:
        tar_samples = tar_shards.iter_shard(path)
        expected = _expected_samples(task)
        checked = 0
        for offset in range(0, shard.samples, ROWS_PER_READ):
            keys = shard.keys[offset : offset + ROWS_PER_READ]
            rows = np.array(shard.rows[offset : offset + ROWS_PER_READ])
            zarr_rows = {f: _read_zarr_rows(task, f, rows) for f in schema}
            for row, (key, tar_sample, truth) in enumerate(zip(keys, tar_samples, islice(expected, len(keys)))):
                if tar_sample["__key__"] != key:
                    problems.append(Problem(task.split, shard.file, f"holds {tar_sample['__key__']} where {key} belongs"))
                    return checked, problems
                for field, spec in schema.items():
                    for fmt, array in (("wds", tar_sample.get(field)), ("zarr", zarr_rows[field][row])):
                        what = _compare(array, truth(field), spec)
                        if what:
                            problems.append(Problem(task.split, f"{fmt}:{key}.{field}", what))
                checked += 1
        if checked != shard.samples:
            problems.append(Problem(task.split, shard.file, f"holds {checked} samples, the manifest says {shard.samples}"))
    except SSMSpineError as exc:  # a damaged output, or a source that no longer reads
        problems.append(Problem(task.split, shard.file, f"cannot be read back: {exc}"))
    return checked, problems


def _read_zarr_rows(task: VerifyTask, field: str, rows: np.ndarray) -> np.ndarray:
    """Rows of one field; a damaged shard becomes an :class:`OutputError` naming the array."""
    try:
        return zarr_store.read_region(task.out, task.split, field, rows[0], rows[-1] + 1)[rows - rows[0]]
    except Exception as exc:  # zarr-python raises ValueError, RuntimeError, ... for damaged shards
        raise OutputError(f"{zarr_store.STORE_NAME}/{task.split}/{field} rows {rows[0]}..{rows[-1]}: "
                          f"{type(exc).__name__}: {exc}") from exc  # fmt: skip


def _check_file(split: str, path: Path, shard: ShardMeta) -> list[Problem]:
    if not path.is_file():
        return [Problem(split, shard.file, "missing")]
    size = path.stat().st_size
    if size != shard.bytes:
        return [Problem(split, shard.file, f"is {size} bytes, the manifest says {shard.bytes} (truncated or altered)")]
    if tar_shards.file_sha256(path) != shard.sha256:
        return [Problem(split, shard.file, "sha256 differs from the manifest (altered after conversion)")]
    return []


def _expected_samples(task: VerifyTask) -> Iterator:
    """Per sample, a function field → what the field must be (an array, or a digest string)."""
    if task.members is None:
        for row in range(task.shard.samples):
            yield lambda field, row=row: task.shard.digests[field][row]
        return
    for sample in source.read_samples(task.members):
        yield sample.__getitem__


def _compare(array: np.ndarray | None, truth: np.ndarray | str, spec: FieldSpec) -> str | None:
    """None when ``array`` is bit-identical to ``truth``; otherwise what differs."""
    if array is None:
        return "missing"
    if isinstance(truth, str):
        if spec_of(array) != spec:
            return f"is {array.dtype} {array.shape}, the schema says {spec.dtype} {spec.shape}"
        return None if digest(array) == truth else "values differ from the source (digest mismatch)"
    if array.dtype != truth.dtype or array.shape != truth.shape:
        return f"is {array.dtype} {array.shape}, the source is {truth.dtype} {truth.shape}"
    if array.tobytes() != truth.tobytes():
        differing = int(np.count_nonzero(array.view(np.uint8) != truth.view(np.uint8)))
        return f"values differ from the source ({differing} bytes differ)"
    return None


def verify_tasks(out: str | os.PathLike, sources: Sequence[str | os.PathLike] | None) -> list[VerifyTask]:
    """One task per shard; with ``sources``, each key is mapped to its member in them."""
    out = os.fspath(out)
    done = manifest.read_manifest(out)
    by_name = {os.path.basename(os.path.normpath(os.fspath(s))): os.fspath(s) for s in sources or ()}
    tasks = []
    for split, info in done["splits"].items():
        members = None
        if sources:
            members = [_locate(by_name, m) for m in info["members"]]
            members_of = dict(zip(info["keys"], members))
        for shard in manifest.shards_of(done, split):
            tasks.append(VerifyTask(
                out=out, split=split, shard=shard, schema=done["schema"],
                members=tuple(members_of[k] for k in shard.keys) if members else None,
            ))  # fmt: skip
        covered = sum(t.shard.samples for t in tasks if t.split == split)
        if covered != info["samples"]:
            raise OutputError(f"{out}: the shards of split {split!r} hold {covered} of {info['samples']} samples")
    return tasks


def _locate(by_name: Mapping[str, str], member: Mapping[str, str]) -> tuple[str, str]:
    try:
        return by_name[member["archive"]], member["member"]
    except KeyError:
        raise OutputError(
            f"the output was converted from {member['archive']}, which is not among the sources given "
            f"({sorted(by_name)})"
        ) from None


def verify(out: str | os.PathLike, sources: Sequence[str | os.PathLike] | None = None, *,
           scheduler: str | None = None, workers: int | None = None, progress: bool = False) -> Report:  # fmt: skip
    """Check every sample of ``out`` in both formats, bit for bit. See the module docstring."""
    tasks = verify_tasks(out, sources)
    results, _ = run_tasks(
        verify_shard, tasks, scheduler=scheduler, workers=workers,
        sizes=[t.shard.samples for t in tasks], size_of=lambda result: result[0],
        desc="verifying", progress=progress,
    )  # fmt: skip
    return Report(
        samples=sum(checked for checked, _ in results),
        shards=len(tasks),
        problems=[problem for _, found in results for problem in found],
        against="sources" if sources else "manifest",
    )
