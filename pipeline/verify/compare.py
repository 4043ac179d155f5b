"""Bit-exact verification of a converted output, against its sources or its own manifest.

With sources, every sample is decoded from the archive again and compared field by field
(dtype, shape and bytes) with what the tar shards and the Zarr store hold. Without sources,
the same reads are compared with the manifest's per-field digests, which were computed from the
decoded sources during conversion. Either way the tar files must also match their recorded size
and sha256, and every difference is reported by split, format, key and field. Work is split per
shard and runs on Dask like the conversion.

Why it costs less than converting: each tar member is decoded once and compared with the truth;
the Zarr chunk of the same field and sample is compared *as encoded bytes* with the tar member's
Blosc frame (a conversion writes the same frame into both). Equal frames in arrays whose layout
was checked (:func:`~pipeline.store.zarr_layout.check_array`) decode to equal values in any Zarr reader,
so only a chunk that differs is decoded and compared on its own. As a check on that reasoning,
the first sample of every shard is also read through zarr-python and compared with the truth.
Tasks keep multi-MB buffers on the heap (:mod:`pipeline.runtime`), as conversion tasks do.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from pipeline.checksums import digest
from pipeline.errors import OutputError, SourceError, SSMSpineError
from pipeline.runtime import tune_worker
from pipeline.schema import FieldSpec, Schema, spec_of
from pipeline.source.passwords import NO_PASSWORDS, Passwords
from pipeline.storage import Storage
from pipeline.store import codecs, tar_shards, zarr_layout, zarr_store
from pipeline.store.manifest import ShardEntry
from pipeline.store.tar_shards import MISSING, shard_file_problem

#: What a field of a sample must be: the decoded source array, or the manifest's digest of it.
Truth = Callable[[str], "np.ndarray | str"]


@dataclass(frozen=True)
class Problem:
    """One difference between an output and what it should hold."""

    split: str
    where: str  # shard file, Zarr array, or "<format>:<key>.<field>"
    what: str

    def __str__(self) -> str:
        return f"[{self.split}] {self.where}: {self.what}"


@dataclass(frozen=True)
class VerifyTask:
    out: Storage
    split: str
    shard: ShardEntry
    schema: Schema
    stored_schema: Schema  # the dtypes the files hold (narrower than the source for some fields)
    chunks_per_shard: int  # Zarr chunks (samples) per shard file
    members: tuple[tuple[str, str], ...] | None  # (archive path, member) per key, or None
    passwords: Passwords = NO_PASSWORDS  # of encrypted sources; they print as Password(***)
    #: fsspec's options for sources at URLs (credentials: never printed, as the passwords)
    storage_options: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False)


def verify_shard(task: VerifyTask) -> tuple[int, list[Problem]]:
    """Compare one tar shard and the Zarr rows aligned with it with the sources (or the manifest digests)."""
    tune_worker()
    shard, split = task.shard, task.split
    if task.out.size(shard.file) is None:
        return 0, [Problem(split, shard.file, MISSING)]
    checked, problems = 0, []
    with contextlib.ExitStack() as stack:
        try:
            path = stack.enter_context(task.out.local_copy(shard.file))  # itself, or a download of it
            if what := shard_file_problem(Storage(path.parent), path.name, shard.bytes, shard.sha256):
                problems.append(Problem(split, shard.file, what))
            zarr_rows = stack.enter_context(_ZarrRows(task, stack))
            problems += zarr_rows.problems
            tar = tar_shards.group_samples(tar_shards.iter_members(stack.enter_context(open(path, "rb")), shard.file))
            truths = _expected_samples(task)
            for position, (key, row) in enumerate(zip(shard.keys, shard.rows)):
                sample = next(tar, None)
                if sample is None or sample["__key__"] != key:
                    found = "ends" if sample is None else f"holds {sample['__key__']}"
                    problems.append(Problem(split, shard.file, f"{found} where {key} belongs"))
                    return checked, problems
                problems += _check_sample(split, key, row, sample, next(truths), zarr_rows, spot_check=position == 0)
                checked += 1
            if (extra := next(tar, None)) is not None:
                problems.append(Problem(split, shard.file, f"holds {extra['__key__']} after its last sample"))
        except SourceError as exc:
            problems.append(Problem(split, shard.file, f"its source cannot be read: {exc}"))
        except SSMSpineError as exc:  # a damaged output
            problems.append(Problem(split, shard.file, f"cannot be read back: {exc}"))
    return checked, problems


def _check_sample(
    split: str, key: str, row: int, sample: Mapping[str, bytes], truth: Truth, zarr_rows: "_ZarrRows", spot_check: bool
) -> list[Problem]:
    """Every field of one sample, in both formats."""
    problems = []
    for field, spec in zarr_rows.schema.items():
        expected = truth(field)
        name = f"{key}.{field}"
        payload = sample.get(tar_shards.member_suffix(field))
        frame = None
        if payload is None:
            wds_what = "missing"
        else:
            try:
                frame = bytes(tar_shards.parse_member(payload, name)[1])
                wds_what = _compare(tar_shards.decode_field(payload, name), expected, spec)
            except OutputError as exc:
                frame, wds_what = None, str(exc)
        if wds_what:
            problems.append(Problem(split, f"wds:{name}", wds_what))
        zarr_what = zarr_rows.check(field, row, name, frame, wds_what, expected, spot_check)
        if zarr_what:
            problems.append(Problem(split, f"zarr:{name}", zarr_what))
    return problems


class _ZarrRows:
    """The Zarr shard files aligned with one tar shard, each array's layout checked once."""

    def __init__(self, task: VerifyTask, stack: contextlib.ExitStack) -> None:
        self.task = task
        self.schema: Schema = task.schema
        self.problems: list[Problem] = []
        self.arrays = {}
        self.chunks: dict[str, zarr_store.ShardChunks] = {}
        rows_needed = max(task.shard.rows, default=-1) + 1
        for field, spec in self.schema.items():
            where = f"{zarr_layout.STORE_NAME}/{task.split}/{field}"
            try:
                store = zarr_layout.open_store(task.out.root, task.out.storage_options)
                array = zarr_layout.open_array_in(store, task.split, field)
                zarr_layout.check_array(array, task.stored_schema[field], rows_needed, task.chunks_per_shard)
                name = zarr_layout.shard_name(task.split, field, task.shard.index, 1 + len(spec.shape))
                try:
                    path = stack.enter_context(task.out.local_copy(name))
                except FileNotFoundError:
                    raise OutputError(f"{name}: missing; the output is damaged") from None
                self.chunks[field] = zarr_store.ShardChunks(path, task.chunks_per_shard, name)
                self.arrays[field] = array
            except OutputError as exc:
                self.problems.append(Problem(task.split, where, str(exc)))
            except Exception as exc:  # zarr-python raises many types for damaged metadata
                self.problems.append(Problem(task.split, where, f"cannot be opened ({type(exc).__name__}: {exc})"))

    def __enter__(self) -> "_ZarrRows":
        return self

    def __exit__(self, *exc_info) -> None:
        for chunks in self.chunks.values():
            chunks.close()

    def check(
        self,
        field: str,
        row: int,
        name: str,
        tar_frame: bytes | None,
        tar_what: str | None,
        expected: np.ndarray | str,
        spot_check: bool,
    ) -> str | None:
        """What is wrong with ``field`` of Zarr row ``row`` (None: nothing, or already reported for the array)."""
        if field not in self.chunks:
            return None
        spec = self.schema[field]
        frame = self.chunks[field].chunk(row - self.task.shard.index * self.task.chunks_per_shard)
        if frame is None:
            return "no chunk was written for this sample (it reads as the fill value)"
        if frame == tar_frame:
            what = tar_what  # the same bytes as the tar member: the same values
        else:
            try:
                stored = self.task.stored_schema[field]
                array = codecs.decode_into(frame, np.empty(stored.shape, stored.numpy_dtype), name)
            except OutputError as exc:
                return str(exc)
            what = _compare(array.astype(spec.numpy_dtype), expected, spec)  # widened as readers widen
        if what is None and spot_check:
            what = self._read_with_zarr_python(field, row, expected, spec)
        return what

    def _read_with_zarr_python(self, field: str, row: int, expected: np.ndarray | str, spec: FieldSpec) -> str | None:
        try:
            array = np.asarray(self.arrays[field][row]).astype(spec.numpy_dtype)
        except Exception as exc:  # zarr-python raises ValueError, RuntimeError, ... for damaged shards
            return f"zarr-python cannot read it ({type(exc).__name__}: {exc})"
        what = _compare(array, expected, spec)
        return f"read by zarr-python, {what}" if what else None


def _expected_samples(task: VerifyTask) -> Iterator[Truth]:
    """Per sample, a function field → what the field must be (an array, or a digest string)."""
    if task.members is None:
        for row in range(task.shard.samples):
            yield lambda field, row=row: task.shard.digests[field][row]
        return
    from pipeline.source.zip_reader import read_samples

    for sample in read_samples(task.members, task.passwords, task.storage_options):
        yield sample.__getitem__


def _compare(array: np.ndarray, truth: np.ndarray | str, spec: FieldSpec) -> str | None:
    """None when ``array`` is bit-identical to ``truth`` (an array, or the digest of one); else what differs."""
    if isinstance(truth, str):
        if spec_of(array) != spec:
            return f"is {array.dtype} {array.shape}, the schema says {spec.dtype} {spec.shape}"
        return None if digest(array) == truth else "values differ from the source (digest mismatch)"
    if array.dtype != truth.dtype or array.shape != truth.shape:
        return f"is {array.dtype} {array.shape}, the source is {truth.dtype} {truth.shape}"
    ours, theirs = _bytes_of(array), _bytes_of(truth)
    if not np.array_equal(ours, theirs):
        return f"values differ from the source ({int(np.count_nonzero(ours != theirs))} bytes differ)"
    return None


def _bytes_of(array: np.ndarray) -> np.ndarray:
    """The array's bytes in C order as a flat uint8 view (a copy only for non-C-contiguous arrays)."""
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)
