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
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from pipeline.atomic import remove_temporaries
from pipeline.checksums import digest, file_sha256, frame_digest
from pipeline.cluster import run_tasks
from pipeline.errors import OutputError, SourceError
from pipeline.runtime import tune_worker
from pipeline.schema import (
    LABEL_NAMES,
    check_sample,
    content_warnings,
    schema_from_json,
    schema_from_sample,
    schema_to_json,
)
from pipeline.sizes import tree_bytes
from pipeline.source.members import SourceMember, fingerprint, list_members
from pipeline.source.zip_reader import Readers
from pipeline.store import manifest, tar_shards, zarr_store
from pipeline.store.codecs import Encoding, choose_encodings, measure
from pipeline.store.manifest import ShardMeta
from pipeline.version import __version__

log = logging.getLogger(__name__)

WDS_DIR = "wds"
#: Per-member tar overhead: a 512-byte header and padding to 512 bytes on average.
TAR_MEMBER_OVERHEAD = 768
#: Shards per split at least (when it has that many samples): tasks enough to share out.
MIN_SHARDS = 8
#: What a plan decides once (by measurement) and every later run into the same output reuses.
PLAN_KEYS = ("schema", "encodings", "encoded_ratio", "group_samples")


@dataclass(frozen=True)
class ConvertOptions:
    """How to convert; everything that changes the output bytes is recorded in the plan."""

    shard_bytes: int = 256_000_000  # as the CLI's default "256MB"
    workers: int | None = None
    scheduler: str | None = None
    split: str | None = None
    val_patients: tuple[int, ...] = ()
    calibration_samples: int = 1
    progress: bool = True
    #: Convert what can be converted and list bad members in ``DIR/rejected.json``.
    skip_bad: bool = False
    #: Replace an output directory that holds a conversion of other sources or options.
    force: bool = False
    #: Encodings per field to use instead of measuring (by default they are chosen by timing, so
    #: two conversions of the same data may pick different ones); fixed encodings make the output
    #: bytes a function of the data alone.
    encodings: Mapping[str, Encoding] | None = None


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
    skip_bad: bool = False

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
    samples_written: int = 0  # in the shards written by this run
    up_to_date: bool = False
    splits: dict[str, int] = field(default_factory=dict)
    rejected: list[dict] = field(default_factory=list)  # members left out under --skip-bad
    warnings: dict[str, list[str]] = field(default_factory=dict)  # key -> content warnings

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


def convert_group(task: GroupTask) -> ShardMeta:
    """Decode one group, write its tar shard and Zarr shards, check both, return metadata.

    Nothing is renamed into place before everything read back correctly, and the progress
    record is written last. A bad member stops the task (nothing of it stays), or, with
    ``skip_bad``, is recorded as rejected and its Zarr row left empty.
    """
    tune_worker()
    group = _GroupWriter(task)
    try:
        with Readers() as readers:
            for row, member in enumerate(task.members):
                try:
                    sample = readers.read_sample(member.archive, member.member)
                    check_sample(sample, group.schema, member.archive, member.member)
                except SourceError as exc:
                    if not task.skip_bad:
                        raise
                    group.reject(member, exc)
                    continue
                group.add(task.start + row, member.key, sample)
        meta = group.finish()
    except OSError as exc:  # a full disk, a vanished output directory, ...
        group.abort()
        raise OutputError(f"{task.out}: writing {shard_file(task.split, task.index)} failed: {exc}") from exc
    except BaseException:
        group.abort()
        raise
    manifest.record_shard(task.out, meta)
    return meta


class _GroupWriter:
    """The files of one task: a tar shard and one Zarr shard per field, filled sample by sample.

    Each field of a sample is compressed once: the Blosc frame goes into the tar member (behind
    an npy header) and, unchanged, into the Zarr shard.
    """

    def __init__(self, task: GroupTask) -> None:
        self.task = task
        self.schema = schema_from_json(task.schema)
        self.encodings = {f: Encoding.from_json(e) for f, e in task.encodings.items()}
        self.tar = tar_shards.ShardWriter(task.tar_path)
        self.zarr_shards = {
            f: zarr_store.ShardFileWriter(task.zarr_path(f, spec), task.group_samples)
            for f, spec in self.schema.items()
        }
        self.keys: list[str] = []
        self.rows: list[int] = []
        self.payloads: list[list[int]] = []
        self.digests: dict[str, list[str]] = {f: [] for f in self.schema}
        self.frame_digests: dict[str, list[str]] = {f: [] for f in self.schema}
        self.warnings: dict[str, list[str]] = {}
        self.rejected: list[dict] = []

    @property
    def writers(self) -> list:
        return [*self.zarr_shards.values(), self.tar]  # the tar last: a kept tar implies its Zarr shards

    def add(self, row: int, key: str, sample: Mapping[str, np.ndarray]) -> None:
        frames = {f: self.encodings[f].encode(sample[f], spec.numpy_dtype.itemsize) for f, spec in self.schema.items()}
        self.payloads.append(self.tar.add(key, {f: tar_shards.member_payload(sample[f], frames[f]) for f in frames}))
        for f, frame in frames.items():
            self.zarr_shards[f].add(frame)
            self.digests[f].append(digest(sample[f]))
            self.frame_digests[f].append(frame_digest(frame))
        self.keys.append(key)
        self.rows.append(row)
        if found := content_warnings(sample):
            self.warnings[key] = found
            log.info("%s: %s", key, "; ".join(found))  # reported in the summary and the manifest

    def reject(self, member: SourceMember, error: SourceError) -> None:
        for shard in self.zarr_shards.values():
            shard.skip()
        self.rejected.append(rejection(error, member))
        log.info("rejected %s", error)  # reported in the summary and rejected.json

    def finish(self) -> ShardMeta:
        """Close every file, read each back, and only then rename them into place."""
        task = self.task
        for writer in self.writers:
            writer.close()
        _check_tar(self.tar.tmp_path, shard_file(task.split, task.index), self.keys, self.digests)
        for f, writer in self.zarr_shards.items():
            _check_zarr_shard(
                writer.tmp_path, task.group_samples, [r - task.start for r in self.rows], self.frame_digests[f]
            )
        meta = ShardMeta(
            split=task.split,
            index=task.index,
            file=shard_file(task.split, task.index),
            start=task.start,
            keys=self.keys,
            bytes=self.tar.tmp_path.stat().st_size,
            sha256=file_sha256(self.tar.tmp_path),
            digests=self.digests,
            payloads=self.payloads,
            rows=self.rows,
            warnings=self.warnings,
            rejected=self.rejected,
        )
        for writer in self.writers:
            writer.commit()
        return meta

    def abort(self) -> None:
        for writer in self.writers:
            writer.abort()


def rejection(error: SourceError, member: SourceMember | None = None) -> dict:
    """The record of a member left out under ``--skip-bad`` (``DIR/rejected.json``)."""
    return {
        "archive": error.archive,
        "member": error.member or (member.member if member else None),
        "key": member.key if member else None,
        "split": member.split if member else None,
        "reason": error.reason,
    }


def _check_zarr_shard(
    path: Path, chunks_per_shard: int, positions: Sequence[int], frame_digests: Sequence[str]
) -> None:
    """Read a written Zarr shard back: its index must locate exactly the frames that were written.

    The frames themselves were checked by decoding them from the tar, so equal bytes at the
    same positions here mean equal arrays there.
    """
    chunks = [(p, frame_digest(c)) for p, c in zarr_store.iter_shard_chunks(path, chunks_per_shard)]
    if chunks != list(zip(positions, frame_digests)):
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


def collect_members(
    sources: Sequence[str], options: ConvertOptions
) -> tuple[dict[str, list[SourceMember]], list[dict]]:
    """Members of all sources by split (validation patients moved to ``val``), and rejections.

    A name outside the layout, or a key that another archive already provides, stops here,
    before anything is written; with ``skip_bad`` it is rejected and the rest goes on.
    """
    by_split: dict[str, list[SourceMember]] = {}
    seen: dict[tuple[str, str], SourceMember] = {}
    rejected: list[dict] = []
    on_bad = (lambda error: rejected.append(rejection(error))) if options.skip_bad else None
    for src in sources:
        for member in list_members(src, options.split, on_bad=on_bad):
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


def _calibrate(members: Sequence[SourceMember], largest_split: int, options: ConvertOptions) -> dict:
    """Decode a few samples: fix the schema, choose encodings, size the shards.

    A shard holds ``shard_bytes`` worth of samples, but never more than 1/:data:`MIN_SHARDS` of
    the largest split, so that a small archive still makes enough tasks for every worker.
    """
    calibration, samples = _calibration_samples(members, options)
    schema = schema_from_sample(samples[0], calibration[0].archive, calibration[0].member)
    for member, sample in zip(calibration[1:], samples[1:]):
        check_sample(sample, schema, member.archive, member.member)
    if options.encodings is None:
        choices = choose_encodings(samples)
    else:
        missing = sorted(set(schema) - set(options.encodings))
        if missing:
            raise ValueError(f"encodings given for {sorted(options.encodings)}, but not for the field(s) {missing}")
        choices = {f: measure([s[f] for s in samples], options.encodings[f]) for f in schema}
    encoded_per_sample = sum(m.nbytes for m in choices.values()) / len(samples)
    encoded_per_sample += TAR_MEMBER_OVERHEAD * len(schema)
    group = max(1, min(int(options.shard_bytes // encoded_per_sample), math.ceil(largest_split / MIN_SHARDS)))
    return {
        "schema": schema_to_json(schema),
        "encodings": {f: m.encoding.to_json() for f, m in choices.items()},
        "encoded_ratio": {f: m.nbytes / sum(s[f].nbytes for s in samples) for f, m in choices.items()},
        "group_samples": group,
    }


def _calibration_samples(
    members: Sequence[SourceMember], options: ConvertOptions
) -> tuple[list[SourceMember], list[dict[str, np.ndarray]]]:
    """The first ``calibration_samples`` members that decode, in split order (any member, without
    ``skip_bad``; with it, a split of bad members only does not stop the others).

    A bad member skipped here is rejected properly by its task later.
    """
    chosen, samples = [], []
    with Readers() as readers:
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


def _plan_identity(
    sources: Sequence[str], by_split: Mapping[str, Sequence[SourceMember]], options: ConvertOptions
) -> dict:
    """What must match for a re-run to reuse earlier output: sources, splits, shard size, fixed encodings."""
    identity = {
        "sources": [fingerprint(s) for s in sources],
        "splits": {split: [m.key for m in members] for split, members in by_split.items()},
        "shard_bytes": options.shard_bytes,
    }
    if options.encodings is not None:  # only then: outputs of measured encodings keep their identity
        identity["encodings"] = {f: e.to_json() for f, e in sorted(options.encodings.items())}
    return identity


def _load_or_make_plan(
    out: Path, identity: dict, by_split: Mapping[str, Sequence[SourceMember]], options: ConvertOptions
) -> dict:
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
                "choose another --out, or use --force to replace it"
            )
        return plan
    largest = max(map(len, by_split.values()))
    every_member = [member for members in by_split.values() for member in members]
    plan = {"identity": identity, **_calibrate(every_member, largest, options)}
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


def _tasks(out: Path, plan: dict, by_split: Mapping[str, Sequence[SourceMember]], skip_bad: bool) -> list[GroupTask]:
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
            skip_bad=skip_bad,
        )
        for split, members in by_split.items()
        for start in range(0, len(members), group)
    ]


def _kept_shard(task: GroupTask, meta: ShardMeta | None) -> ShardMeta | None:
    """``meta`` if it records ``task`` and its shard is still there with that size and checksum."""
    if meta is None or meta.keys != [m.key for m in task.members] or meta.start != task.start:
        return None
    path = Path(task.out) / meta.file
    if not path.exists() or path.stat().st_size != meta.bytes or file_sha256(path) != meta.sha256:
        log.warning("%s: does not match its progress record; converting it again", path)
        return None
    return meta


def _create_zarr(out: Path, plan: dict, by_split: Mapping[str, Sequence[SourceMember]], sources: list[dict]) -> None:
    schema = schema_from_json(plan["schema"])
    encodings = {f: Encoding.from_json(e) for f, e in plan["encodings"].items()}
    for split, members in by_split.items():
        zarr_store.create_split(
            out,
            split,
            schema,
            encodings,
            patients=np.array([m.patient for m in members]),
            augs=np.array([m.aug for m in members]),
            shard_samples=plan["group_samples"],
            attributes={
                "fields": list(schema),
                "label_names": {str(k): v for k, v in LABEL_NAMES.items()},
                "schema": plan["schema"],
                "sources": sources,
            },
        )


def _build_manifest(
    plan: dict, by_split: Mapping[str, Sequence[SourceMember]], metas: Sequence[ShardMeta], rejected: Sequence[dict]
) -> dict:
    splits = {}
    for split, members in by_split.items():
        shards = sorted((m for m in metas if m.split == split), key=lambda m: m.index)
        by_key = {m.key: m for m in members}
        converted = [by_key[key] for shard in shards for key in shard.keys]
        splits[split] = {
            "samples": len(converted),
            "keys": [m.key for m in converted],
            "rows": [row for shard in shards for row in shard.rows],
            "patient": [m.patient for m in converted],
            "aug": [m.aug for m in converted],
            "members": [{"archive": os.path.basename(m.archive), "member": m.member} for m in converted],
            "warnings": {key: found for shard in shards for key, found in shard.warnings.items()},
            "shards": [s.to_json() for s in shards],
        }
    return {
        "format": manifest.FORMAT,
        "format_version": manifest.FORMAT_VERSION,
        "tool_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "identity": plan["identity"],
        "sources": plan["identity"]["sources"],
        **{k: plan[k] for k in PLAN_KEYS},
        "label_names": {str(k): v for k, v in LABEL_NAMES.items()},
        "zarr": zarr_store.STORE_NAME,
        "wds": {"dir": WDS_DIR, "member_suffix": tar_shards.EXTENSION},
        "rejected": list(rejected),
        "splits": splits,
    }


def _is_up_to_date(out: Path, identity: dict) -> bool:
    """A finished output of the same conversion whose shards all have their recorded sizes."""
    if not manifest.manifest_path(out).exists():
        return False
    done = manifest.read_manifest(out)
    if done["identity"] != identity:
        raise OutputError(
            f"{out} holds a finished conversion of other sources or options; "
            "choose another --out, or use --force to replace it"
        )
    return all(
        (out / shard["file"]).is_file() and (out / shard["file"]).stat().st_size == shard["bytes"]
        for info in done["splits"].values()
        for shard in info["shards"]
    )


def _replace_other_conversion(out: Path, identity: dict) -> None:
    """For ``--force``: remove what a conversion of something else left in ``out`` (and only that)."""
    plan = manifest.plan_path(out)
    done = manifest.manifest_path(out)
    other = (done.exists() and manifest.read_manifest(out).get("identity") != identity) or (
        plan.exists() and manifest.read_json(plan).get("identity") != identity
    )
    if other or (not done.exists() and not plan.exists() and zarr_store.store_path(out).exists()):
        log.warning("%s: replacing the output of another conversion (--force)", out)
        for name in (manifest.MANIFEST_NAME, manifest.REJECTED_NAME):
            (out / name).unlink(missing_ok=True)
        for folder in (manifest.PROGRESS_DIR, WDS_DIR, zarr_store.STORE_NAME):
            shutil.rmtree(out / folder, ignore_errors=True)


def convert(
    sources: Sequence[str | os.PathLike], out: str | os.PathLike, options: ConvertOptions = ConvertOptions()
) -> Summary:
    """Convert SSMSpine source archives (or extracted directories) into ``out``.

    Resumable: re-running after an interruption converts only the missing shards; re-running
    on a finished output does no work. See :class:`ConvertOptions` for bad input and ``force``.
    """
    started = time.perf_counter()
    sources = [os.fspath(s) for s in sources]
    out = Path(out)
    by_split, rejected = collect_members(sources, options)
    if not by_split:
        raise SourceError(", ".join(sources), None, "no sample could be listed")
    identity = _plan_identity(sources, by_split, options)
    summary = Summary(
        samples=sum(map(len, by_split.values())), source_bytes=sum(s["bytes"] for s in identity["sources"])
    )
    if options.force:
        _replace_other_conversion(out, identity)
    if _is_up_to_date(out, identity):
        summary.up_to_date = True
        done = manifest.read_manifest(out)
    else:
        done = _convert_missing(out, identity, by_split, rejected, options, summary, started)
    summary.samples = sum(info["samples"] for info in done["splits"].values())
    summary.splits = {split: info["samples"] for split, info in done["splits"].items()}
    summary.rejected = done["rejected"]
    summary.warnings = {key: found for info in done["splits"].values() for key, found in info["warnings"].items()}
    summary.zarr_bytes = tree_bytes(zarr_store.store_path(out))
    summary.wds_bytes = tree_bytes(out / WDS_DIR)
    summary.seconds = time.perf_counter() - started
    return summary


def _convert_missing(
    out: Path,
    identity: dict,
    by_split: Mapping[str, Sequence[SourceMember]],
    rejected: list[dict],
    options: ConvertOptions,
    summary: Summary,
    started: float,
) -> dict:
    """Plan (or reuse the plan), run the tasks whose shards are missing, write the manifest."""
    if manifest.manifest_path(out).exists():
        _reopen_finished(out, identity)
    (out / WDS_DIR).mkdir(parents=True, exist_ok=True)
    remove_temporaries(out)
    plan = _load_or_make_plan(out, identity, by_split, options)
    _create_zarr(out, plan, by_split, identity["sources"])
    tasks = _tasks(out, plan, by_split, options.skip_bad)
    summary.planning_seconds = time.perf_counter() - started
    recorded = {(m.split, m.index): m for m in manifest.recorded_shards(out)}
    kept = {(t.split, t.index): m for t in tasks if (m := _kept_shard(t, recorded.get((t.split, t.index))))}
    todo = [t for t in tasks if (t.split, t.index) not in kept]
    summary.shards_kept, summary.shards_written = len(kept), len(todo)
    summary.samples_written = sum(len(t.members) for t in todo)
    written, summary.startup_seconds = _run(todo, options)
    metas = [*kept.values(), *written]
    rejected = [*rejected, *(r for meta in metas for r in meta.rejected)]
    remove_temporaries(out)  # those of workers that died mid-task and had their task rerun
    if rejected:
        manifest.write_json_atomic(out / manifest.REJECTED_NAME, rejected)
    done = _build_manifest(plan, by_split, metas, rejected)
    manifest.write_manifest(out, done)
    shutil.rmtree(out / manifest.PROGRESS_DIR, ignore_errors=True)
    return done


def _run(tasks: Sequence[GroupTask], options: ConvertOptions) -> tuple[list[ShardMeta], float]:
    """Run tasks on Dask; return their results and the seconds spent starting the cluster."""
    return run_tasks(
        convert_group,
        tasks,
        scheduler=options.scheduler,
        workers=options.workers,
        sizes=[len(t.members) for t in tasks],
        size_of=lambda meta: meta.samples + len(meta.rejected),
        desc="converting",
        progress=options.progress,
    )
