"""Session-wide fixtures: synthetic archives, a real Dask cluster, and a converted output.

Everything expensive is built once per session with ``tmp_path_factory``; tests that change an
output copy it first.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.convert import ConvertOptions, convert
from pipeline.tools.synth import SynthConfig, write_archive

#: Small shards so that a dozen samples (~1.7 MB encoded each) make several shards of 4 samples.
SMALL_SHARDS = 8_000_000


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-protocol server on 127.0.0.1; this process's environment points at it."""
    from s3_server import running_s3_server

    with running_s3_server() as server:
        yield server


@pytest.fixture
def serve():
    """``serve(root)``: a :class:`http_server.RangeServer` of ``root`` on 127.0.0.1, until the test ends."""
    from http_server import RangeHandler, RangeServer, running

    with contextlib.ExitStack() as stack:
        yield lambda root, handler=RangeHandler: stack.enter_context(running(RangeServer(root, handler)))


@pytest.fixture
def flaky_proxy():
    """``flaky_proxy(url, fail_every=, drop_every=, always=)``: a :class:`http_server.FlakyProxy` before ``url``."""
    from http_server import FlakyProxy, running

    with contextlib.ExitStack() as stack:
        yield lambda url, **how: stack.enter_context(running(FlakyProxy(url, **how)))


@pytest.fixture(scope="session")
def dask_scheduler(s3_server):
    """Address of a real local Dask cluster (2 single-threaded worker processes on 127.0.0.1).

    Started after the S3 server, so that its workers inherit the environment that reaches it.
    """
    from pipeline.cluster import local_cluster

    with local_cluster(2) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="session")
def train_zip(tmp_path_factory) -> Path:
    """A default-format archive: 2 patients × 6 shapes, numpy values, numpy 1.x pickles."""
    return write_archive(tmp_path_factory.mktemp("src") / "SSMSpine_Train.zip", SynthConfig(patients=2, shapes=6))


@pytest.fixture(scope="session")
def test_zip(tmp_path_factory) -> Path:
    return write_archive(
        tmp_path_factory.mktemp("src") / "SSMSpine_Test.zip",
        SynthConfig(patients=1, shapes=3, first_patient=81, root="Test", seed=1),
    )


@pytest.fixture(scope="session")
def converted(tmp_path_factory, train_zip, test_zip, dask_scheduler) -> Path:
    """``train_zip`` + ``test_zip`` converted with small shards. Treat as read-only."""
    out = tmp_path_factory.mktemp("converted") / "out"
    convert([train_zip, test_zip], out, fast_options(dask_scheduler))
    return out


@pytest.fixture(scope="session")
def eleven(tmp_path_factory, dask_scheduler) -> Path:
    """A converted output whose only split (train) holds 11 samples: 2 and 3 ranks leave a remainder."""
    archive = write_archive(tmp_path_factory.mktemp("src11") / "SSMSpine_Train.zip", SynthConfig(patients=1, shapes=11))
    out = tmp_path_factory.mktemp("eleven") / "out"
    convert([archive], out, fast_options(dask_scheduler))
    return out


def fast_options(scheduler: str, **overrides) -> ConvertOptions:
    defaults = {"shard_bytes": SMALL_SHARDS, "scheduler": scheduler, "progress": False}
    return ConvertOptions(**{**defaults, **overrides})


def copy_output(out: Path, tmp_path: Path) -> Path:
    target = tmp_path / "out"
    shutil.copytree(out, target)
    return target


def load_trusted(archive: Path, member: str) -> dict[str, np.ndarray]:
    """Independent reference decoding of our own synthetic files (trusted: we wrote them)."""
    with zipfile.ZipFile(archive) as z:
        data = torch.load(io.BytesIO(z.read(member)), weights_only=False)
    return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in data.items()}


def assert_bit_exact(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.tobytes() == expected.tobytes(), f"{what}: values differ"


def manifest_json(out: Path) -> dict:
    """An output's manifest as plain JSON, for tests that edit it by hand (as a user might)."""
    return json.loads((out / "manifest.json").read_text())


def write_manifest_json(out: Path, data: dict) -> None:
    (out / "manifest.json").write_text(json.dumps(data, indent=1))


def tensorstore_read(out: Path, split: str, field: str, row: int) -> np.ndarray:
    """A row as a tensorstore user who knows only the array's own metadata reads it: cast back to
    the source dtype that a narrowed field's attribute names."""
    path = Path(out) / "ssmspine.zarr" / split / field
    import tensorstore

    store = tensorstore.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}}).result()
    source = json.loads((path / "zarr.json").read_text())["attributes"].get("ssmspine_source_dtype")
    if source is not None:
        store = tensorstore.cast(store, np.dtype(source).name)
    return store[row].read().result()
