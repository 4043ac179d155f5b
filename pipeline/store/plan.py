"""The plan of a conversion, as recorded in ``DIR/.progress/plan.json`` and repeated in the manifest.

A plan is decided once (the encodings by timing) and every later run into the same output reuses
it; its :class:`Identity` says whether it may. The stored dtypes it chose are part of the plan, so
a resumed run stores every shard alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

from pipeline.schema import Schema, schema_from_json, schema_to_json
from pipeline.store.codecs import Encoding
from pipeline.store.json_fields import JsonObject


@dataclass(frozen=True)
class SourceRecord:
    """A source as the plan knows it: name, size and a fingerprint of its content."""

    name: str
    path: str
    bytes: int
    fingerprint: str

    def to_json(self) -> dict:
        return {"name": self.name, "path": self.path, "bytes": self.bytes, "fingerprint": self.fingerprint}

    @classmethod
    def parse(cls, data: JsonObject) -> "SourceRecord":
        return cls(
            name=data.get("name", str),
            path=data.get("path", str, ""),
            bytes=data.get("bytes", int),
            fingerprint=data.get("fingerprint", str, ""),
        )


@dataclass(frozen=True)
class Identity:
    """What must match for a re-run to reuse an earlier output: sources, keys per split, shard
    size, the encodings if they were fixed rather than measured, whether dtypes may be narrowed,
    and what measured encodings favour."""

    sources: tuple[SourceRecord, ...]
    splits: Mapping[str, tuple[str, ...]]
    shard_bytes: int
    encodings: Mapping[str, Encoding] | None = None
    #: store fields narrower than the source where proven lossless (False: ``--keep-dtypes``)
    narrow_dtypes: bool = True
    #: what the measured encodings put first, ``"size"`` or ``"speed"`` (``--prefer``)
    prefer: str = "size"

    def __post_init__(self) -> None:  # tuples throughout, so that equality never hinges on list vs tuple
        object.__setattr__(self, "sources", tuple(self.sources))
        object.__setattr__(self, "splits", {name: tuple(keys) for name, keys in self.splits.items()})

    def to_json(self) -> dict:
        data: dict[str, Any] = {
            "sources": [s.to_json() for s in self.sources],
            "splits": {name: list(keys) for name, keys in self.splits.items()},
            "shard_bytes": self.shard_bytes,
            "narrow_dtypes": self.narrow_dtypes,
        }
        if self.prefer != "size":  # absent: size, as in outputs written before the choice existed
            data["prefer"] = self.prefer
        if self.encodings is not None:
            data["encodings"] = {f: e.to_json() for f, e in sorted(self.encodings.items())}
        return data

    @classmethod
    def parse(cls, data: JsonObject) -> "Identity":
        splits = data.object("splits")
        encodings = data.get("encodings", dict, None)
        return cls(
            sources=tuple(SourceRecord.parse(s) for s in data.objects("sources")),
            splits={name: tuple(_strings(splits, name)) for name in splits.data},
            shard_bytes=data.get("shard_bytes", int),
            encodings=None if encodings is None else data.parsed("encodings", _encodings),
            narrow_dtypes=data.get("narrow_dtypes", bool, True),
            prefer=data.get("prefer", str, "size"),
        )


@dataclass(frozen=True)
class Plan:
    """The identity of a conversion and what calibration decided for it."""

    identity: Identity
    schema: Schema
    encodings: Mapping[str, Encoding]
    #: encoded bytes / raw bytes per field, measured on the calibration samples
    encoded_ratio: Mapping[str, float] = field(default_factory=dict)
    #: samples per task: per tar shard, and per Zarr shard of every array
    group_samples: int = 1
    #: field -> stored dtype, for the fields stored narrower than the source (see
    #: :mod:`pipeline.narrowing`); absent from outputs written before, which store source dtypes
    stored_dtypes: Mapping[str, str] = field(default_factory=dict)

    @property
    def stored_schema(self) -> Schema:
        """The schema as the files hold it: the source's, but for the narrowed fields' dtypes."""
        return {f: replace(s, dtype=self.stored_dtypes.get(f, s.dtype)) for f, s in self.schema.items()}

    def decisions_json(self) -> dict:
        """What the manifest repeats of the plan (everything but the identity)."""
        return {
            "schema": schema_to_json(self.schema),
            "encodings": {f: e.to_json() for f, e in self.encodings.items()},
            "encoded_ratio": dict(self.encoded_ratio),
            "group_samples": self.group_samples,
            "stored_dtypes": dict(self.stored_dtypes),
        }

    def to_json(self) -> dict:
        return {"identity": self.identity.to_json(), **self.decisions_json()}

    @classmethod
    def parse(cls, data: JsonObject, identity: Identity | None = None) -> "Plan":
        """A plan from its JSON, or from a manifest's members with the manifest's ``identity``."""
        return cls(
            identity=identity if identity is not None else Identity.parse(data.object("identity")),
            schema=data.parsed("schema", schema_from_json),
            encodings=data.parsed("encodings", _encodings),
            encoded_ratio={f: float(r) for f, r in data.get("encoded_ratio", dict, {}).items()},
            group_samples=data.get("group_samples", int),
            stored_dtypes={f: str(d) for f, d in data.get("stored_dtypes", dict, {}).items()},
        )


def _encodings(data: Mapping[str, Any]) -> dict[str, Encoding]:
    return {f: Encoding.from_json(e) for f, e in data.items()}


def _strings(data: JsonObject, name: str) -> Sequence[str]:
    values = data.list(name)
    if not all(isinstance(v, str) for v in values):
        raise data.error(name, "expected a list of strings")
    return values
