"""The conversion: source members → groups → Dask tasks → shards, then the manifest.

The coordinator lists members (zip central directories only), decodes a couple of samples to fix
the schema and measure encodings, creates the Zarr arrays, and submits one task per group of
consecutive samples of a split. A task (:func:`convert_group`) is a pure function of its
:class:`GroupTask`: it reads its members straight from the zip, writes one tar shard and the
Zarr shards of its own rows, reads both back, and returns a small :class:`ShardMeta`. Big data
never crosses the wire, and no two tasks write the same file.

Everything a task finishes is recorded under ``DIR/.progress``; a re-run keeps recorded shards
whose size and checksum still match and converts only the rest.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import xxhash

from . import __version__, manifest, source, tar_shards, zarr_store
from .atomic import remove_temporaries
from .cluster import run_tasks
from .codecs import Encoding, choose_encodings
from .manifest import ShardMeta
from .schema import (
    LABEL_NAMES,
    OutputError,
    Schema,
    SSMSpineError,
    check_sample,
    schema_from_json,
    schema_from_sample,
    schema_to_json,
)
from .source import SourceMember

log = logging.getLogger(__name__)

WDS_DIR = "wds"
#: Per-member tar overhead: a 512-byte header and padding to 512 bytes on average.
TAR_MEMBER_OVERHEAD = 768
#: glibc ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: What a plan decides once (by measurement) and every later run into the same output reuses.
PLAN_KEYS = ("schema", "encodings", "encoded_ratio", "group_samples")


@dataclass(frozen=True)
class ConvertOptions:
    """How to convert; everything that changes the output bytes is recorded in the plan."""

    shard_bytes: int = 256 << 20
    workers: int | None = None
    scheduler: str | None = None
    split: str | None = None
    val_patients: tuple[int, ...] = ()
    calibration_samples: int = 1
    progress: bool = True


@dataclass(frozen=True)
class GroupTask:
    """Everything one task needs; small, so it travels cheaply to any worker."""

    out: str
    split: str
    index: int
    start: int
    members: tuple[SourceMember, ...]
    schema: dict
    encodings: dict
    group_samples: int

    @property
    def tar_path(self) -> Path:
        return Path(self.out) / shard_file(self.split, self.index)

    def zarr_path(self, field: str, spec) -> Path:
        return zarr_store.shard_file(self.out, self.split, field, self.index, 1 + len(spec.shape))


@dataclass
class Summary:
    """What a conversion did, for the CLI's final report."""

    samples: int = 0
    source_bytes: int = 0
    zarr_bytes: int = 0
    wds_bytes: int = 0
    seconds: float = 0.0
    planning_seconds: float = 0.0  # listing, calibration, creating the Zarr arrays
    startup_seconds: float = 0.0  # starting (or connecting to) the Dask cluster
    shards_written: int = 0
    shards_kept: int = 0
    up_to_date: bool = False
    splits: dict[str, int] = field(default_factory=dict)

    samples_written: int = 0

    @property
    def converting_seconds(self) -> float:
        """Wall time of the tasks alone: without planning and cluster start-up."""
        return self.seconds - self.planning_seconds - self.startup_seconds

    @property
    def samples_per_second(self) -> float:
        return self.samples_written / self.converting_seconds if self.samples_written else 0.0


def shard_file(split: str, index: int) -> str:
    return f"{WDS_DIR}/{split}-{index:06d}.tar"


# --------------------------------------------------------------------------- the task


def digest(array: np.ndarray) -> str:
    """128-bit digest of an array's bytes (dtype and shape are checked by the schema)."""
    return xxhash.xxh3_128_hexdigest(memoryview(np.ascontiguousarray(array)).cast("B"))


def convert_group(task: GroupTask) -> ShardMeta:
    """Decode one group, write its tar shard and Zarr shards, check both, return metadata.

    Each field of a sample is compressed once: the Blosc frame goes into the tar member (behind
    an npy header) and, unchanged, into the Zarr shard. Nothing is renamed into place before
    everything read back correctly; the progress record is written last.
    """
    _tune_worker()
    schema = schema_from_json(task.schema)
    encodings = {f: Encoding.from_json(e) for f, e in task.encodings.items()}
    tar = tar_shards.ShardWriter(task.tar_path)
    zarr_shards = {f: zarr_store.ShardFileWriter(task.zarr_path(f, spec), task.group_samples) for f, spec in schema.items()}
    writers = [*zarr_shards.values(), tar]
    try:
        keys, payloads = [], []
        digests: dict[str, list[str]] = {f: [] for f in schema}
        frame_digests: dict[str, list[str]] = {f: [] for f in schema}
        for member, sample in zip(task.members, source.read_samples(m.location for m in task.members)):
            check_sample(sample, schema, member.archive, member.member)
            frames = {f: encodings[f].encode(sample[f], spec.numpy_dtype.itemsize) for f, spec in schema.items()}
            payloads.append(tar.add(member.key, {f: tar_shards.member_payload(sample[f], frames[f]) for f in schema}))
            for f, frame in frames.items():
                zarr_shards[f].add(frame)
                digests[f].append(digest(sample[f]))
                frame_digests[f].append(xxhash.xxh3_128_hexdigest(frame))
            keys.append(member.key)
        for writer in writers:
            writer.close()
        _check_tar(tar.tmp_path, shard_file(task.split, task.index), keys, digests)
        for f, writer in zarr_shards.items():
            _check_zarr_shard(writer.tmp_path, task.group_samples, frame_digests[f])
        meta = ShardMeta(
            split=task.split,
            index=task.index,
            file=shard_file(task.split, task.index),
            start=task.start,
            keys=keys,
            bytes=tar.tmp_path.stat().st_size,
            sha256=tar_shards.file_sha256(tar.tmp_path),
            digests=digests,
            payloads=payloads,
        )
        for writer in writers:  # the tar last: a kept tar implies its Zarr shards are in place
            writer.commit()
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    manifest.record_shard(task.out, meta)
    return meta


def _tune_worker() -> None:
    """Make a worker process fit for tasks that juggle multi-MB buffers, one task per core.

    Threads: torch and Blosc would each start a thread per core on top of the one task per core.
    Memory: Dask sets ``MALLOC_TRIM_THRESHOLD_`` low for its workers, and with it glibc stops
    adapting its mmap threshold, so every multi-MB buffer of a sample becomes a fresh mmap whose
    pages fault in one by one: that doubled a task's CPU time. Keeping such buffers on the heap
    costs memory only up to one sample's working set. Done here rather than in the cluster's
    environment so that it also holds on clusters started by the user (``--scheduler``).
    """
    import ctypes
    import ctypes.util

    import numcodecs.blosc
    import torch

    torch.set_num_threads(1)
    numcodecs.blosc.set_nthreads(1)
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name) if libc_name else None
    if libc is not None and hasattr(libc, "mallopt"):  # glibc; elsewhere the defaults stand
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
        libc.mallopt(_M_MMAP_THRESHOLD, 256 << 20)


def _check_zarr_shard(path: Path, chunks_per_shard: int, frame_digests: Sequence[str]) -> None:
    """Read a written Zarr shard back: its index must locate exactly the frames that were written.

    The frames themselves were checked by decoding them from the tar, so equal bytes here
    mean equal arrays there.
    """
    chunks = [xxhash.xxh3_128_hexdigest(c) for c in zarr_store.iter_shard_chunks(path, chunks_per_shard)]
    if chunks != list(frame_digests):
        raise OutputError(f"{path}: Zarr shard reads back differently from what was written")


def _check_tar(path: Path, name: str, keys: Sequence[str], digests: Mapping[str, Sequence[str]]) -> None:
    """Read the finished (still temporary) tar back and compare every field with the source."""
    samples = tar_shards.iter_shard(path)
    count = 0
    for row, sample in enumerate(samples):
        if row >= len(keys) or sample["__key__"] != keys[row]:
            raise OutputError(f"{name}: sample {row} reads back as {sample['__key__']!r}")
        for f, expected in digests.items():
            if digest(sample[f]) != expected[row]:
                raise OutputError(f"{name}: {keys[row]}.{f} reads back differently from the source")
        count += 1
    if count != len(keys):
        raise OutputError(f"{name}: reads back {count} samples, wrote {len(keys)}")


# --------------------------------------------------------------------------- the plan


def collect_members(sources: Sequence[str], options: ConvertOptions) -> dict[str, list[SourceMember]]:
    """Members of all sources by split, with validation patients moved to ``val``."""
    by_split: dict[str, list[SourceMember]] = {}
    seen: dict[tuple[str, str], SourceMember] = {}
    for src in sources:
        for member in source.list_members(src, options.split):
            if member.patient in options.val_patients and member.split == "train":
                member = SourceMember("val", member.patient, member.aug, member.archive, member.member, member.root)
            previous = seen.setdefault((member.split, member.key), member)
            if previous is not member:
                raise source.SourceError(
                    member.archive, member.member,
                    f"sample {member.key} of split {member.split!r} also comes from "
                    f"{previous.archive}: {previous.member}",
                )  # fmt: skip
            by_split.setdefault(member.split, []).append(member)
    for split_members in by_split.values():
        split_members.sort()
    return dict(sorted(by_split.items()))


def _calibrate(members: Sequence[SourceMember], options: ConvertOptions) -> dict:
    """Decode a few samples: fix the schema, choose encodings, size the shards."""
    calibration = members[: options.calibration_samples]
    samples = list(source.read_samples(m.location for m in calibration))
    schema = schema_from_sample(samples[0], calibration[0].archive, calibration[0].member)
    for member, sample in zip(calibration[1:], samples[1:]):
        check_sample(sample, schema, member.archive, member.member)
    choices = choose_encodings(samples)
    encoded_per_sample = sum(m.nbytes for m in choices.values()) / len(samples)
    encoded_per_sample += TAR_MEMBER_OVERHEAD * len(schema)
    group = max(1, int(options.shard_bytes // encoded_per_sample))
    return {
        "schema": schema_to_json(schema),
        "encodings": {f: m.encoding.to_json() for f, m in choices.items()},
        "encoded_ratio": {f: m.nbytes / sum(s[f].nbytes for s in samples) for f, m in choices.items()},
        "group_samples": group,
    }


def _plan_identity(sources: Sequence[str], by_split: Mapping[str, Sequence[SourceMember]],
                   options: ConvertOptions) -> dict:  # fmt: skip
    """What must match for a re-run to reuse earlier output: sources, splits and shard size."""
    return {
        "sources": [source.fingerprint(s) for s in sources],
        "splits": {split: [m.key for m in members] for split, members in by_split.items()},
        "shard_bytes": options.shard_bytes,
    }


def _load_or_make_plan(out: Path, identity: dict, by_split: Mapping[str, Sequence[SourceMember]],
                       options: ConvertOptions) -> dict:  # fmt: skip
    """The plan of an earlier run into ``out`` if it converts the same thing, else a new one.

    Encodings are chosen by timing, so a re-run must reuse the recorded choice rather than
    measure again: otherwise resumed shards could differ from the kept ones.
    """
    path = manifest.plan_path(out)
    if path.exists():
        plan = manifest.read_json(path)
        if plan["identity"] != identity:
            raise OutputError(
                f"{out} holds an unfinished conversion of other sources or options; "
                "choose another --out, or delete it to start over"
            )
        return plan
    plan = {"identity": identity, **_calibrate(next(iter(by_split.values())), options)}
    manifest.write_json_atomic(path, plan)
    return plan


def _reopen_finished(out: Path, identity: dict) -> None:
    """Turn a finished output that needs repair back into an unfinished one, losing nothing.

    Its shards become progress records and its plan the current plan; only then does the
    manifest go, so the output never claims to be complete while a shard is being rewritten.
    """
    done = manifest.read_manifest(out)
    for split in done["splits"]:
        for meta in manifest.shards_of(done, split):
            manifest.record_shard(out, meta)
    manifest.write_json_atomic(manifest.plan_path(out), {"identity": identity, **{k: done[k] for k in PLAN_KEYS}})
    manifest.manifest_path(out).unlink()


def _tasks(out: Path, plan: dict, by_split: Mapping[str, Sequence[SourceMember]]) -> list[GroupTask]:
    group = plan["group_samples"]
    return [
        GroupTask(
            out=str(out),
            split=split,
            index=start // group,
            start=start,
            members=tuple(members[start : start + group]),
            schema=plan["schema"],
            encodings=plan["encodings"],
            group_samples=group,
        )
        for split, members in by_split.items()
        for start in range(0, len(members), group)
    ]


def _kept_shard(task: GroupTask, meta: ShardMeta | None) -> ShardMeta | None:
    """``meta`` if it records ``task`` and its shard is still there with that size and checksum."""
    if meta is None or meta.keys != [m.key for m in task.members] or meta.start != task.start:
        return None
    path = Path(task.out) / meta.file
    if not path.exists() or path.stat().st_size != meta.bytes or tar_shards.file_sha256(path) != meta.sha256:
        log.warning("%s: does not match its progress record; converting it again", path)
        return None
    return meta


def _create_zarr(out: Path, plan: dict, by_split: Mapping[str, Sequence[SourceMember]],
                 sources: list[dict]) -> None:  # fmt: skip
    schema = schema_from_json(plan["schema"])
    encodings = {f: Encoding.from_json(e) for f, e in plan["encodings"].items()}
    for split, members in by_split.items():
        zarr_store.create_split(
            out, split, schema, encodings,
            patients=np.array([m.patient for m in members]),
            augs=np.array([m.aug for m in members]),
            shard_samples=plan["group_samples"],
            attributes={"fields": list(schema), "label_names": {str(k): v for k, v in LABEL_NAMES.items()},
                        "schema": plan["schema"], "sources": sources},
        )  # fmt: skip


def _build_manifest(plan: dict, by_split: Mapping[str, Sequence[SourceMember]],
                    metas: Sequence[ShardMeta]) -> dict:  # fmt: skip
    splits = {}
    for split, members in by_split.items():
        shards = sorted((m for m in metas if m.split == split), key=lambda m: m.index)
        splits[split] = {
            "samples": len(members),
            "keys": [m.key for m in members],
            "patient": [m.patient for m in members],
            "aug": [m.aug for m in members],
            "members": [{"archive": os.path.basename(m.archive), "member": m.member} for m in members],
            "shards": [s.to_json() for s in shards],
        }
    return {
        "format": manifest.FORMAT,
        "format_version": manifest.FORMAT_VERSION,
        "tool_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sources": plan["identity"]["sources"],
        "shard_bytes": plan["identity"]["shard_bytes"],
        **{k: plan[k] for k in PLAN_KEYS},
        "label_names": {str(k): v for k, v in LABEL_NAMES.items()},
        "zarr": zarr_store.STORE_NAME,
        "wds": {"dir": WDS_DIR, "member_suffix": tar_shards.EXTENSION},
        "splits": splits,
    }


def _is_up_to_date(out: Path, identity: dict) -> bool:
    """A finished output of the same sources whose shards all have their recorded sizes."""
    if not manifest.manifest_path(out).exists():
        return False
    done = manifest.read_manifest(out)
    same = done["sources"] == identity["sources"] and done["shard_bytes"] == identity["shard_bytes"] and {
        split: info["keys"] for split, info in done["splits"].items()
    } == identity["splits"]
    if not same:
        raise OutputError(f"{out} holds a finished conversion of other sources or options; choose another --out")
    return all(
        (out / shard["file"]).is_file() and (out / shard["file"]).stat().st_size == shard["bytes"]
        for info in done["splits"].values()
        for shard in info["shards"]
    )


def convert(sources: Sequence[str | os.PathLike], out: str | os.PathLike,
            options: ConvertOptions = ConvertOptions()) -> Summary:  # fmt: skip
    """Convert SSMSpine source archives (or extracted directories) into ``out``.

    Resumable: re-running after an interruption converts only the missing shards; re-running
    on a finished output does no work.
    """
    started = time.perf_counter()
    sources = [os.fspath(s) for s in sources]
    out = Path(out)
    by_split = collect_members(sources, options)
    identity = _plan_identity(sources, by_split, options)
    summary = Summary(samples=sum(map(len, by_split.values())), splits={s: len(m) for s, m in by_split.items()},
                      source_bytes=sum(s["bytes"] for s in identity["sources"]))  # fmt: skip
    if _is_up_to_date(out, identity):
        summary.up_to_date = True
    else:
        if manifest.manifest_path(out).exists():
            _reopen_finished(out, identity)
        (out / WDS_DIR).mkdir(parents=True, exist_ok=True)
        remove_temporaries(out)
        plan = _load_or_make_plan(out, identity, by_split, options)
        _create_zarr(out, plan, by_split, identity["sources"])
        tasks = _tasks(out, plan, by_split)
        summary.planning_seconds = time.perf_counter() - started
        recorded = {(m.split, m.index): m for m in manifest.recorded_shards(out)}
        kept = {(t.split, t.index): m for t in tasks if (m := _kept_shard(t, recorded.get((t.split, t.index))))}
        todo = [t for t in tasks if (t.split, t.index) not in kept]
        summary.shards_kept, summary.shards_written = len(kept), len(todo)
        summary.samples_written = sum(len(t.members) for t in todo)
        written, summary.startup_seconds = _run(todo, options)
        manifest.write_manifest(out, _build_manifest(plan, by_split, [*kept.values(), *written]))
        shutil.rmtree(out / manifest.PROGRESS_DIR, ignore_errors=True)
    summary.zarr_bytes = tree_bytes(zarr_store.store_path(out))
    summary.wds_bytes = tree_bytes(out / WDS_DIR)
    summary.seconds = time.perf_counter() - started
    return summary


def tree_bytes(path: str | os.PathLike) -> int:
    """Bytes of all files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _run(tasks: Sequence[GroupTask], options: ConvertOptions) -> tuple[list[ShardMeta], float]:
    """Run tasks on Dask; return their results and the seconds spent starting the cluster."""
    return run_tasks(
        convert_group, tasks, scheduler=options.scheduler, workers=options.workers,
        sizes=[len(t.members) for t in tasks], size_of=lambda meta: meta.samples,
        desc="converting", progress=options.progress,
    )  # fmt: skip
