"""``make bench`` (object storage): the readers from an S3-protocol server against local files, and
conversion to a bucket against conversion to disk, measured in the same run, interleaved.

The server is moto's (a test dependency, which ``make`` installs) in a process of its own on
127.0.0.1: a loopback server, so the ratios say what our side costs (requests, retries' wrapping,
staging, uploads), not what a real network adds. The readers read the benchmark's converted set
(:func:`~benchmarks.baselines.prepare`) uploaded to a bucket: ``StreamingDataset`` (img+label,
batches of :data:`~benchmarks.loaders.BATCH_SIZE`, in process) and ``ZarrDataset`` (img+label,
random order, in process), and ``StreamingDataset`` from the bucket with a shard cache (``cache_dir=``): its
first epoch, untimed, starts a copy of every shard, which the benchmark waits for
(:func:`~pipeline.store.cached_ranges.wait_for_fills`), so every timed epoch is a later one, read from the
copies. The conversions convert the same archive with the same fixed encodings
on one local Dask cluster, kept for every run, into a fresh directory or a fresh prefix each time;
their figure is the tasks' wall time (``Summary.converting_seconds``: without planning and the
cluster's start-up). Then the HTTP rows: streaming from the same output on an HTTP server
against the local files (:mod:`benchmarks.http_reading`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

import fsspec
from torch.utils.data import DataLoader

from pipeline.cluster import local_cluster
from pipeline.convert import ConvertOptions, convert
from pipeline.read.stream import StreamingDataset
from pipeline.read.zarr_dataset import ZarrDataset
from pipeline.store.cached_ranges import wait_for_fills
from pipeline.store.manifest import read_manifest

from benchmarks.baselines import prepare
from benchmarks.common import interleave, machine_description, markdown_table
from benchmarks.http_reading import http_lines, http_rows
from benchmarks.loaders import (
    BATCH_SIZE,
    MIN_MEASURE_SECONDS,
    SEED,
    TimedReader,
    map_loader,
    stream_reader,
    time_readers,
)
from benchmarks.names import STREAMING

FIELDS = ("img", "label")
#: Where the streaming row with a shard cache reads from: later epochs, from the local copies.
CACHED = "S3, loopback, cached"
#: How long the S3 server may take to answer its first request.
SERVER_START_SECONDS = 60


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """moto's server in a process of its own; this process's environment points at it meanwhile."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    settings = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while True:  # until it answers: polling a condition, bounded
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"moto's S3 server did not start on {endpoint}")
            time.sleep(0.1)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=30)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _new_bucket() -> str:
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    fs.mkdir(bucket)
    return f"s3://{bucket}"


def _upload(out: Path) -> str:
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    url = f"{_new_bucket()}/shards"
    for part in ("manifest.json", "ssmspine.zarr", "wds"):
        fs.put(str(out / part), f"{url}/{part}", recursive=True)
    return url


def _readers(out: Path, url: str, cache_dir: Path) -> list[TimedReader]:
    readers = []
    for where, root in (("local files", out), ("S3, loopback", url)):
        readers.append(stream_reader(root, FIELDS, where, 0))
        zarr_ds = ZarrDataset(root, fields=FIELDS)
        readers.append(TimedReader("zarr", where, 0, map_loader(zarr_ds, 0), len(zarr_ds)))
    return readers + [_cached_stream(url, cache_dir)]


def _cached_stream(url: str, cache_dir: Path) -> TimedReader:
    """Streaming from the bucket with a shard cache, after a first epoch whose copies have all been made."""
    options = {"batch_size": BATCH_SIZE, "seed": SEED, "cache_dir": cache_dir, "cache_limit": 1 << 40}
    dataset = StreamingDataset(url, fields=FIELDS, **options)
    loader = DataLoader(dataset, batch_size=None)
    reader = TimedReader(STREAMING, CACHED, 0, loader, dataset.samples, before_epoch=dataset.set_epoch)
    reader.epoch_seconds()  # the first epoch: read by ranges, one copy of each shard started
    wait_for_fills()
    return reader


class _Conversion:
    """One way of converting (to disk or to a bucket); each call converts into a fresh place."""

    def __init__(self, archive: Path, target: str, scheduler: str, encodings) -> None:
        self.archive, self.target, self.scheduler, self.encodings = archive, target, scheduler, encodings
        self.scratch = Path(tempfile.mkdtemp(prefix="ssmspine-bench-convert-"))

    def __call__(self) -> float:
        if self.target == "disk":
            out = str(self.scratch / uuid.uuid4().hex)
        else:
            out = f"{self.target}/{uuid.uuid4().hex}"
        options = ConvertOptions(scheduler=self.scheduler, progress=False, encodings=self.encodings)
        summary = convert([self.archive], out, options)
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir()
        return summary.converting_seconds


def run(samples: int = 64, repeats: int = 5, scratch: Path | None = None, convert_repeats: int = 2) -> dict:
    """Run the object-storage benchmark; return its figures (also printed as a table)."""
    owned = scratch is None
    scratch = Path(tempfile.mkdtemp(prefix="ssmspine-bench-")) if owned else Path(scratch)
    try:
        with s3_server(), local_cluster(2) as cluster:
            _, out = prepare(samples, scratch, cluster.scheduler_address)
            url = _upload(out)
            readers = _readers(out, url, scratch / "shard-cache")
            reading = time_readers(readers, repeats)
            archive = out.parent / "SSMSpine_Train.zip"
            encodings = read_manifest(out).encodings
            bucket = _new_bucket()
            conversions = {
                "to disk": _Conversion(archive, "disk", cluster.scheduler_address, encodings),
                "to S3, loopback": _Conversion(archive, bucket, cluster.scheduler_address, encodings),
            }
            converting = interleave(conversions, convert_repeats)
        http = http_rows(out, repeats)
    finally:
        if owned:
            shutil.rmtree(scratch, ignore_errors=True)
    n = readers[0].samples
    local = {r.reader: reading[r.name].median for r in readers if r.fields == "local files"}
    rows = [
        {
            "system": r.reader,
            "where": r.fields,
            "samples_per_s": n / reading[r.name].median,
            "vs_local": local[r.reader] / reading[r.name].median,
            "seconds": reading[r.name].seconds,
        }
        for r in readers
    ]
    disk = converting["to disk"].median
    rows += [
        {
            "system": "convert",
            "where": name,
            "samples_per_s": n / timing.median,
            "vs_local": disk / timing.median,
            "seconds": timing.seconds,
        }
        for name, timing in converting.items()
    ]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_description(),
        "samples": n,
        "repeats": repeats,
        "convert_repeats": convert_repeats,
        "results": rows,
        "http": http,
    }
    print(
        f"object storage: {n} synthetic samples, {result['machine']}, {result['date']}; readers: median of "
        f"{repeats} interleaved measurements (each ≥ {MIN_MEASURE_SECONDS} s), conversions: of {convert_repeats}"
    )
    print("\n".join(object_storage_lines(result)))
    return result


def object_storage_lines(figures: dict) -> list[str]:
    """The tables of :func:`run`'s figures (printed, and in the report)."""
    table = [
        [x["system"], x["where"], f"{x['samples_per_s']:.1f}", f"{x['vs_local']:.2f}×"] for x in figures["results"]
    ]
    lines = [markdown_table(["system", "where", "samples/s", "× local"], table), ""]
    return lines + (http_lines(figures["http"]) if figures.get("http") else [])
