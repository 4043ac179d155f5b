"""What a conversion is asked to do (:class:`ConvertOptions`) and what it did (:class:`Summary`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

from pipeline.errors import UsageError
from pipeline.source.passwords import NO_PASSWORDS, Passwords
from pipeline.store.codecs import PREFERENCES, Encoding
from pipeline.store.manifest import RejectedMember

log = logging.getLogger(__name__)


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
    #: Store every field in its source dtype, rather than label and masks in the narrowest
    #: integer dtype proven lossless for every sample (``--keep-dtypes``).
    keep_dtypes: bool = False
    #: What the measured choice of encodings puts first: ``"size"`` (smallest shards) or
    #: ``"speed"`` (fastest decoding, in about twice the bytes on float images; ``--prefer speed``).
    prefer: str = "size"
    #: Options for fsspec for ``out`` and the sources at URLs (credentials, endpoint, ...): flat keys
    #: apply to every URL, a key named after a protocol (``{"s3": {...}, "https": {...}}``) to its
    #: URLs only (:func:`~pipeline.io.filesystems.options_for`); by default they come from the
    #: environment and configuration files. They travel to the workers inside the tasks, as the
    #: passwords do, and are never written to the output or a log, nor part of the plan's identity.
    storage_options: Mapping[str, Any] | None = field(default=None, repr=False)
    #: The passwords of encrypted sources (:class:`~pipeline.source.passwords.Passwords`); they
    #: travel to the workers and are never written, logged or part of the plan's identity.
    passwords: Passwords = field(default=NO_PASSWORDS, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.prefer not in PREFERENCES:
            raise UsageError(f"prefer must be one of {PREFERENCES}, got {self.prefer!r}")
        if self.encodings is not None and self.prefer != "size":
            raise UsageError(f"prefer={self.prefer!r} chooses among measured encodings, but encodings are given")


@dataclass(frozen=True)
class Summary:
    """What a conversion did, for the CLI's final report (returned whole by :func:`pipeline.convert.convert`)."""

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
    rejected: list[RejectedMember] = field(default_factory=list)  # members left out under --skip-bad
    warnings: dict[str, list[str]] = field(default_factory=dict)  # key -> content warnings

    @property
    def converting_seconds(self) -> float:
        """Wall time of the tasks alone: without planning and cluster start-up."""
        return self.seconds - self.planning_seconds - self.startup_seconds

    @property
    def samples_per_second(self) -> float:
        return self.samples_written / self.converting_seconds if self.samples_written else 0.0
