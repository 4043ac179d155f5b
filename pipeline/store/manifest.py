"""``DIR/manifest.json`` and the per-shard progress records a conversion leaves behind.

The manifest is the one document a reader needs: sources (name, bytes, fingerprint), schema,
encodings, and per split the keys, the patient/aug of each key and the tar shards (file,
samples, bytes, sha256) with a 128-bit digest of every field of every sample — enough to check
an output bit for bit without the source archives.

While a conversion runs, each finished task records its :class:`ShardMeta` in
``DIR/.progress/<split>-NNNNNN.json``; a re-run keeps those shards (after checking size and
checksum) and converts only the rest. The manifest is written last, atomically; its presence
means the output is complete.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pipeline.atomic import write_bytes_atomic
from pipeline.errors import NotFoundError, OutputError

MANIFEST_NAME = "manifest.json"
PROGRESS_DIR = ".progress"
PLAN_NAME = "plan.json"
REJECTED_NAME = "rejected.json"
FORMAT = "ssmspine-shards"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ShardMeta:
    """What one conversion task wrote: a tar shard and the Zarr region aligned with it."""

    split: str
    index: int
    file: str  # relative to DIR, e.g. "wds/train-000000.tar"
    start: int  # first sample (row in the split's Zarr arrays)
    keys: list[str]
    bytes: int
    sha256: str
    digests: dict[str, list[str]] = field(default_factory=dict)  # field -> per-sample xxh3-128 hex
    #: per sample, [offset, size] of each field's member payload in the tar, in schema order
    payloads: list[list[int]] = field(default_factory=list)
    #: per sample, its row in the split's Zarr arrays (``start + i`` unless members were rejected)
    rows: list[int] = field(default_factory=list)
    #: key -> content warnings (values kept as they are; see schema.content_warnings)
    warnings: dict[str, list[str]] = field(default_factory=dict)
    #: members of this group left out under --skip-bad: {archive, member, key, reason}
    rejected: list[dict] = field(default_factory=list)

    @property
    def samples(self) -> int:
        return len(self.keys)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ShardMeta":
        return cls(**data)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    write_bytes_atomic(path, json.dumps(data, indent=1).encode())


def read_json(path: str | os.PathLike) -> Any:
    try:
        with open(path) as file:
            return json.load(file)
    except json.JSONDecodeError as exc:
        raise OutputError(f"{path}: not valid JSON ({exc})") from exc


def progress_path(out: str | os.PathLike, split: str, index: int) -> Path:
    return Path(out) / PROGRESS_DIR / f"{split}-{index:06d}.json"


def plan_path(out: str | os.PathLike) -> Path:
    return Path(out) / PROGRESS_DIR / PLAN_NAME


def record_shard(out: str | os.PathLike, meta: ShardMeta) -> None:
    write_json_atomic(progress_path(out, meta.split, meta.index), meta.to_json())


def recorded_shards(out: str | os.PathLike) -> list[ShardMeta]:
    """Shards whose tasks finished since the last manifest was written."""
    folder = Path(out) / PROGRESS_DIR
    return [ShardMeta.from_json(read_json(p)) for p in sorted(folder.glob("*-*.json"))]


def manifest_path(out: str | os.PathLike) -> Path:
    return Path(out) / MANIFEST_NAME


def write_manifest(out: str | os.PathLike, manifest: Mapping[str, Any]) -> None:
    write_json_atomic(manifest_path(out), manifest)


def read_manifest(out: str | os.PathLike) -> dict:
    """The manifest of a finished output in a local directory, checked for format and version
    (:func:`pipeline.store.location.read_stream_manifest` reads it from a URL too)."""
    path = manifest_path(out)
    if not path.exists():
        raise OutputError(f"{path}: no manifest; the conversion into {out} has not finished")
    return parse_manifest(path.read_bytes(), str(path))


def parse_manifest(data: bytes, where: str) -> dict:
    """A manifest's JSON, checked for format and version; ``where`` names it in errors."""
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OutputError(f"{where}: not valid JSON ({exc})") from exc
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != FORMAT
        or manifest.get("format_version") != FORMAT_VERSION
    ):
        raise OutputError(f"{where}: not an {FORMAT} v{FORMAT_VERSION} manifest")
    return manifest


def shards_of(manifest: Mapping[str, Any], split: str) -> list[ShardMeta]:
    try:
        return [ShardMeta.from_json(s) for s in manifest["splits"][split]["shards"]]
    except KeyError as exc:
        raise NotFoundError(f"the manifest has no split {split!r} (has {sorted(manifest['splits'])})") from exc
