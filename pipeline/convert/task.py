"""One Dask task: a group of consecutive samples of a split → one tar shard and its aligned Zarr shards.

A task (:func:`convert_group`) is a pure function of its :class:`GroupTask`: it reads its members
straight from the zip, writes one tar shard and the Zarr shards of its own rows, reads both back,
and returns a small :class:`ShardEntry`. Big data never crosses the wire, and no two tasks write the
same file. The read-back here is deliberately independent of the readers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.checksums import digest, file_sha256, frame_digest
from pipeline.convert.members import rejection
from pipeline.errors import OutputError, SourceError
from pipeline.narrowing import narrowed, value_range
from pipeline.runtime import tune_worker
from pipeline.schema import FieldSpec, Schema, check_sample, content_warnings
from pipeline.source.members import SourceMember
from pipeline.source.passwords import NO_PASSWORDS, Passwords
from pipeline.source.zip_reader import Readers
from pipeline.storage import Storage
from pipeline.store import progress, tar_shards, zarr_layout, zarr_store
from pipeline.store.codecs import Encoding
from pipeline.store.manifest import RejectedMember, ShardEntry
from pipeline.store.tar_shards import shard_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupTask:
    """Everything one task needs; small, so it travels cheaply to any worker."""

    out: Storage
    split: str
    index: int
    start: int
    members: tuple[SourceMember, ...]
    schema: Schema
    encodings: Mapping[str, Encoding]
    group_samples: int
    skip_bad: bool = False
    #: field -> stored dtype of the narrowed fields (each sample is proven to fit first)
    stored_dtypes: Mapping[str, str] = field(default_factory=dict)
    #: The sources' passwords (they print as ``Password(***)``; see :mod:`pipeline.source.passwords`)
    passwords: Passwords = NO_PASSWORDS
    #: fsspec's options for sources at URLs (credentials: never printed, as the passwords)
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def tar_name(self) -> str:
        return shard_file(self.split, self.index)

    def zarr_name(self, field: str, spec: FieldSpec) -> str:
        return zarr_layout.shard_name(self.split, field, self.index, 1 + len(spec.shape))


def convert_group(task: GroupTask) -> ShardEntry:
    """Decode one group, write its tar shard and Zarr shards, check both, return metadata.

    Nothing is renamed into place before everything read back correctly, and the progress
    record is written last. A bad member stops the task (nothing of it stays), or, with
    ``skip_bad``, is recorded as rejected and its Zarr row left empty.
    """
    tune_worker()
    group = _GroupWriter(task)
    try:
        with Readers(task.passwords, task.storage_options) as readers:
            for row, member in enumerate(task.members):
                try:
                    sample = readers.read_sample(member.archive, member.member)
                    check_sample(sample, group.schema, member.archive, member.member)
                    stored = _narrowed(sample, task.stored_dtypes, member)
                except SourceError as exc:
                    if not task.skip_bad:
                        raise
                    group.reject(member, exc)
                    continue
                group.add(task.start + row, member.key, sample, stored)
        entry = group.finish()
    except OSError as exc:  # a full disk, a vanished output directory, ...
        group.abort()
        raise OutputError(f"{task.out}: writing {shard_file(task.split, task.index)} failed: {exc}") from exc
    except BaseException:
        group.abort()
        raise
    progress.record_shard(task.out, entry)
    return entry


class _GroupWriter:
    """The files of one task: a tar shard and one Zarr shard per field, filled sample by sample.

    Each field of a sample is compressed once: the Blosc frame goes into the tar member (behind
    an npy header) and, unchanged, into the Zarr shard.
    """

    def __init__(self, task: GroupTask) -> None:
        self.task = task
        self.schema = task.schema
        self.encodings = task.encodings
        self.tar = tar_shards.ShardWriter(task.out.atomic_file(task.tar_name))
        self.zarr_shards = {
            f: zarr_store.ShardFileWriter(task.out.atomic_file(task.zarr_name(f, spec)), task.group_samples)
            for f, spec in self.schema.items()
        }
        self.keys: list[str] = []
        self.rows: list[int] = []
        self.payloads: list[list[int]] = []
        self.digests: dict[str, list[str]] = {f: [] for f in self.schema}
        self.frame_digests: dict[str, list[str]] = {f: [] for f in self.schema}
        self.warnings: dict[str, list[str]] = {}
        self.rejected: list[RejectedMember] = []

    @property
    def writers(self) -> list:
        return [*self.zarr_shards.values(), self.tar]  # the tar last: a kept tar implies its Zarr shards

    def add(self, row: int, key: str, sample: Mapping[str, np.ndarray], stored: Mapping[str, np.ndarray]) -> None:
        """Write one sample: ``stored`` holds its fields as stored (narrowed or not), ``sample`` the source."""
        frames = {f: self.encodings[f].encode(stored[f], stored[f].dtype.itemsize) for f in self.schema}
        payloads = {f: tar_shards.member_payload(stored[f], frames[f], sample[f].dtype) for f in frames}
        self.payloads.append(self.tar.add(key, payloads))
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

    def finish(self) -> ShardEntry:
        """Close every file, read each back, and only then rename them into place."""
        task = self.task
        for writer in self.writers:
            writer.close()
        _check_tar(self.tar.tmp_path, shard_file(task.split, task.index), self.keys, self.digests)
        for f, writer in self.zarr_shards.items():
            _check_zarr_shard(
                writer.tmp_path, task.group_samples, [r - task.start for r in self.rows], self.frame_digests[f]
            )
        entry = ShardEntry(
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
            rejected=tuple(self.rejected),
        )
        for writer in self.writers:
            writer.commit()
        return entry

    def abort(self) -> None:
        for writer in self.writers:
            writer.abort()


def _narrowed(
    sample: Mapping[str, np.ndarray], stored_dtypes: Mapping[str, str], member: SourceMember
) -> dict[str, np.ndarray]:
    """The sample's fields as stored: each narrowed field narrowed, once proven to widen back to
    the same bytes; a sample that does not fit is a :class:`SourceError` naming it."""
    stored = dict(sample)
    for f, dtype in stored_dtypes.items():
        narrow = narrowed(sample[f], np.dtype(dtype))
        if narrow is None:
            raise SourceError(
                member.archive,
                member.member,
                f"field {f!r} holds {value_range(sample[f])}, which {np.dtype(dtype)} (chosen from the first "
                "samples) cannot store exactly; convert again with --keep-dtypes",
            )
        stored[f] = narrow
    return stored


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
