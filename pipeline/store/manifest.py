"""``DIR/manifest.json``: the one document a reader needs, as typed records parsed in one place.

The manifest names the sources (name, bytes, fingerprint), the plan (schema, encodings, shard
size) and, per split, the keys, the patient/aug and Zarr row of each key, and the tar shards
(file, samples, bytes, sha256) with a 128-bit digest of every field of every sample — enough to
check an output bit for bit without the source archives. It is written last, atomically: its
presence means the output is complete. :func:`parse_manifest` is the only parser; it checks the
format, version and the shape of every record, so a damaged manifest fails as one line naming
the member at fault.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

from pipeline.errors import NotFoundError, OutputError
from pipeline.schema import Schema
from pipeline.storage import Storage, as_storage
from pipeline.store.codecs import Encoding
from pipeline.store.json_fields import JsonObject
from pipeline.store.plan import Identity, Plan, SourceRecord

MANIFEST_NAME = "manifest.json"
REJECTED_NAME = "rejected.json"
FORMAT = "ssmspine-shards"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class RejectedMember:
    """A member left out under ``--skip-bad`` (``DIR/rejected.json`` lists them too)."""

    archive: str
    member: str | None
    key: str | None
    split: str | None
    reason: str

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def parse(cls, data: JsonObject) -> "RejectedMember":
        return cls(
            archive=data.get("archive", str),
            member=data.get("member", (str, type(None)), None),
            key=data.get("key", (str, type(None)), None),
            split=data.get("split", (str, type(None)), None),
            reason=data.get("reason", str),
        )


@dataclass(frozen=True)
class ShardEntry:
    """What one conversion task wrote: a tar shard and the Zarr region aligned with it.

    Per-sample sequences are kept as the JSON parser made them (lists): a release's manifest
    holds about 12,500 samples, and readers index into them rather than copy them.
    """

    split: str
    index: int
    file: str  # relative to DIR, e.g. "wds/train-000000.tar"
    start: int  # first sample (row in the split's Zarr arrays)
    keys: Sequence[str]
    bytes: int
    sha256: str
    digests: Mapping[str, Sequence[str]] = field(default_factory=dict)  # field -> per-sample xxh3-128 hex
    #: per sample, [offset, size] of each field's member payload in the tar, in schema order
    payloads: Sequence[Sequence[int]] = field(default_factory=list)
    #: per sample, its row in the split's Zarr arrays (``start + i`` unless members were rejected)
    rows: Sequence[int] = field(default_factory=list)
    #: key -> content warnings (values kept as they are; see schema.content_warnings)
    warnings: Mapping[str, Sequence[str]] = field(default_factory=dict)
    #: members of this group left out under --skip-bad
    rejected: Sequence[RejectedMember] = ()

    @property
    def samples(self) -> int:
        return len(self.keys)

    def to_json(self) -> dict:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["rejected"] = [r.to_json() for r in self.rejected]
        return data

    @classmethod
    def parse(cls, data: JsonObject) -> "ShardEntry":
        keys = data.list("keys")
        start = data.get("start", int)
        payloads = data.list("payloads", None, [])  # none recorded: readers of the tars say so
        if payloads and len(payloads) != len(keys):
            raise data.error("payloads", f"has {len(payloads)} entries, expected {len(keys)}")
        digests = data.object("digests", {})
        for name in digests.data:
            digests.list(name, len(keys))
        return cls(
            split=data.get("split", str),
            index=data.get("index", int),
            file=data.get("file", str),
            start=start,
            keys=keys,
            bytes=data.get("bytes", int),
            sha256=data.get("sha256", str),
            digests=digests.data,
            payloads=payloads,
            rows=data.list("rows", len(keys), list(range(start, start + len(keys)))),
            warnings=data.get("warnings", dict, {}),
            rejected=tuple(RejectedMember.parse(r) for r in data.objects("rejected", [])),
        )


@dataclass(frozen=True)
class MemberName:
    """Where a sample came from: the archive's file name and the member's path in it."""

    archive: str
    member: str


@dataclass(frozen=True)
class SplitEntry:
    """One split: its samples in order (key, Zarr row, patient, aug, source member) and its shards."""

    keys: Sequence[str]
    rows: Sequence[int]
    patient: Sequence[int]
    aug: Sequence[int]
    members: Sequence[MemberName]
    shards: Sequence[ShardEntry]
    warnings: Mapping[str, Sequence[str]] = field(default_factory=dict)

    @property
    def samples(self) -> int:
        return len(self.keys)

    def to_json(self) -> dict:
        return {
            "samples": self.samples,
            "keys": list(self.keys),
            "rows": list(self.rows),
            "patient": list(self.patient),
            "aug": list(self.aug),
            "members": [asdict(m) for m in self.members],
            "warnings": dict(self.warnings),
            "shards": [s.to_json() for s in self.shards],
        }

    @classmethod
    def parse(cls, data: JsonObject) -> "SplitEntry":
        keys = data.list("keys")
        n = data.get("samples", int)
        if len(keys) != n:
            raise data.error("keys", f"has {len(keys)} entries, samples says {n}")
        shards = [ShardEntry.parse(s) for s in data.objects("shards")]
        if sum(s.samples for s in shards) != n:
            raise data.error("shards", f"hold {sum(s.samples for s in shards)} samples, samples says {n}")
        members = data.objects("members")
        if len(members) != n:
            raise data.error("members", f"has {len(members)} entries, expected {n}")
        return cls(
            keys=keys,
            rows=data.list("rows", n, list(range(n))),
            patient=data.list("patient", n),
            aug=data.list("aug", n),
            members=[MemberName(m.get("archive", str), m.get("member", str)) for m in members],
            shards=shards,
            warnings=data.get("warnings", dict, {}),
        )


@dataclass(frozen=True)
class Manifest:
    """A finished output: its plan, its splits and what was left out."""

    plan: Plan
    splits: Mapping[str, SplitEntry]
    rejected: Sequence[RejectedMember] = ()
    tool_version: str | None = None
    created: str | None = None
    label_names: Mapping[str, str] = field(default_factory=dict)
    zarr: str = "ssmspine.zarr"  # the Zarr store's folder in DIR
    wds_dir: str = "wds"  # the tar shards' folder in DIR
    member_suffix: str = ".npy"  # tar member names: <key>.<field><suffix>

    @property
    def identity(self) -> Identity:
        return self.plan.identity

    @property
    def sources(self) -> tuple[SourceRecord, ...]:
        return self.plan.identity.sources

    @property
    def schema(self) -> Schema:
        return self.plan.schema

    @property
    def stored_schema(self) -> Schema:
        """The schema as the files hold it (narrowed dtypes); :attr:`schema` is the source's."""
        return self.plan.stored_schema

    @property
    def encodings(self) -> Mapping[str, Encoding]:
        return self.plan.encodings

    def split(self, name: str) -> SplitEntry:
        """The split ``name``, or :class:`NotFoundError` naming the splits there are."""
        if name not in self.splits:
            raise NotFoundError(f"the manifest has no split {name!r} (has {sorted(self.splits)})")
        return self.splits[name]

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "tool_version": self.tool_version,
            "created": self.created,
            "identity": self.identity.to_json(),
            "sources": [s.to_json() for s in self.sources],
            **self.plan.decisions_json(),
            "label_names": dict(self.label_names),
            "zarr": self.zarr,
            "wds": {"dir": self.wds_dir, "member_suffix": self.member_suffix},
            "rejected": [r.to_json() for r in self.rejected],
            "splits": {name: entry.to_json() for name, entry in self.splits.items()},
        }

    @classmethod
    def parse(cls, data: JsonObject) -> "Manifest":
        wds = data.object("wds", {})
        splits = data.object("splits")
        return cls(
            plan=Plan.parse(data, Identity.parse(data.object("identity"))),
            splits={name: SplitEntry.parse(splits.object(name)) for name in splits.data},
            rejected=tuple(RejectedMember.parse(r) for r in data.objects("rejected", [])),
            tool_version=data.get("tool_version", (str, type(None)), None),
            created=data.get("created", (str, type(None)), None),
            label_names=data.get("label_names", dict, {}),
            zarr=data.get("zarr", str, "ssmspine.zarr"),
            wds_dir=wds.get("dir", str, "wds"),
            member_suffix=wds.get("member_suffix", str, ".npy"),
        )


def parse_manifest(data: bytes, where: str) -> Manifest:
    """The one parser: a manifest's bytes, checked for format, version and the shape of every
    record; ``where`` names it in errors."""
    try:
        document = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OutputError(f"{where}: not valid JSON ({exc})") from exc
    if (
        not isinstance(document, dict)
        or document.get("format") != FORMAT
        or document.get("format_version") != FORMAT_VERSION
    ):
        raise OutputError(f"{where}: not an {FORMAT} v{FORMAT_VERSION} manifest")
    return Manifest.parse(JsonObject(document, where))


def has_manifest(storage: Storage) -> bool:
    return storage.exists(MANIFEST_NAME)


def read_manifest(out: str | os.PathLike | Storage, storage_options: Mapping[str, Any] | None = None) -> Manifest:
    """The manifest of a finished output, in a local directory or at a URL
    (:func:`pipeline.store.location.read_stream_manifest` reads it over ``http(s)://`` too)."""
    storage = as_storage(out, storage_options)
    try:
        data = storage.read_bytes(MANIFEST_NAME)
    except FileNotFoundError:
        raise OutputError(
            f"{storage.name(MANIFEST_NAME)}: no manifest; the conversion into {storage} has not finished"
        ) from None
    return parse_manifest(data, storage.name(MANIFEST_NAME))


def write_manifest(out: str | os.PathLike | Storage, manifest: Manifest) -> None:
    """Written last, in one piece: a rename on disk, one PUT on object storage."""
    as_storage(out).write_bytes(MANIFEST_NAME, json.dumps(manifest.to_json(), indent=1).encode())
