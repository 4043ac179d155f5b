"""Where an output lives: a local directory or any fsspec URL (``s3://``, ``gs://``, ``file://``, ...).

Why one class: a conversion's coordinator and its Dask workers share nothing but the output's
address, and every rule of the design (each task owns its files, a file appears under its final
name only when complete, the manifest last) must hold on object storage as on disk:

* on a local disk a file is written under a temporary name, fsynced and renamed into place
  (:class:`~pipeline.atomic.AtomicFile`);
* on object storage there is no rename, but a PUT is atomic: a file is written to a local
  staging file first, read back there by the conversion's checks, and uploaded whole under its
  final name (:class:`StagedUpload`). An interrupted upload leaves no object behind.

Credentials and endpoints come from where fsspec and its back ends look (environment, config
files), or from ``storage_options``; a :class:`Storage` pickles with its options (Dask tasks need
them) but never prints them, and URLs are named through :func:`~pipeline.urls.safe_url`. A remote
root's reads and writes go through :mod:`pipeline.io` (:class:`~pipeline.io.folder.RemoteFolder`):
retried, and failing as one :class:`OutputError` by the same mapping as every other remote read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

from pipeline.atomic import AtomicFile, write_bytes_atomic
from pipeline.checksums import file_sha256
from pipeline.errors import OutputError
from pipeline.io.folder import RemoteFolder
from pipeline.io.remote_calls import RemoteCalls
from pipeline.retry import reason
from pipeline.sizes import tree_bytes
from pipeline.urls import is_url, safe_url

T = TypeVar("T")
#: An output's remote operations, reads and writes alike: a lasting failure is one
#: :class:`OutputError` naming the object; a missing object passes, for the callers that expect one.
OUTPUT_CALLS = RemoteCalls(failed="failed", reading=False, missing_passes=True)


class Storage:
    """An output's root; relative names such as ``wds/train-000000.tar`` address its files."""

    def __init__(self, root: str | os.PathLike, storage_options: Mapping[str, Any] | None = None) -> None:
        root = os.fspath(root)
        if root.startswith("file://"):
            root = root[len("file://") :]
        self.remote = is_url(root)
        self.root = root.rstrip("/") if self.remote else os.path.abspath(root)
        self.storage_options = dict(storage_options or {})
        #: a remote root's objects: their file system (made in each process) and the one retry-and-error mapping
        self.objects = RemoteFolder(self.root, self.storage_options, OUTPUT_CALLS) if self.remote else None

    def __str__(self) -> str:
        return safe_url(self.root)

    __repr__ = __str__

    def name(self, relative: str) -> str:
        """The full path or URL of ``relative``, for messages (without secrets)."""
        return f"{self}/{relative}" if self.remote else os.path.join(self.root, relative)

    def local_path(self, relative: str = "") -> Path:
        """The local path of ``relative``; only for local roots."""
        if self.remote:
            raise OutputError(f"{self}: this operation needs a local directory")
        return Path(self.root, relative)

    def call(self, relative: str, operation: Callable[[Any, str], T]) -> T:
        """``operation(fs, key)`` on the remote object ``relative``: transient failures retried,
        lasting ones one :class:`OutputError` naming it (``FileNotFoundError`` passes for callers)."""
        if self.objects is None:
            raise OutputError(f"{self}: this operation needs a URL")
        return self.objects.call(relative, operation)

    # ------------------------------------------------------------------------------- reading

    def exists(self, relative: str) -> bool:
        if not self.remote:
            return os.path.exists(self.local_path(relative))
        return self.call(relative, lambda fs, key: fs.exists(key))

    def size(self, relative: str) -> int | None:
        """The size of a file, or ``None`` if there is none."""
        if not self.remote:
            path = self.local_path(relative)
            return path.stat().st_size if path.is_file() else None
        try:
            return int(self.call(relative, lambda fs, key: fs.size(key)))
        except FileNotFoundError:
            return None

    def read_bytes(self, relative: str) -> bytes:
        """A whole (small) file; ``FileNotFoundError`` if there is none."""
        if not self.remote:
            return self.local_path(relative).read_bytes()
        return self.call(relative, lambda fs, key: fs.cat_file(key))

    def sha256(self, relative: str) -> str:
        with self.local_copy(relative) as path:
            return file_sha256(path)

    @contextmanager
    def local_copy(self, relative: str) -> Iterator[Path]:
        """A local file with the contents of ``relative``: the file itself on a local disk, a
        temporary download (removed afterwards) for a remote one."""
        if not self.remote:
            yield self.local_path(relative)
            return
        folder = tempfile.mkdtemp(prefix="ssmspine-download-")
        try:
            path = Path(folder, relative.replace("/", "_"))
            self.call(relative, lambda fs, key: fs.get_file(key, str(path)))
            yield path
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def list(self, folder: str, suffix: str = "") -> list[str]:
        """Relative names of the files directly in ``folder`` ending with ``suffix``, sorted."""
        if not self.remote:
            path = self.local_path(folder)
            names = [p.name for p in path.iterdir() if p.is_file()] if path.is_dir() else []
        else:
            try:
                found = self.call(folder, lambda fs, key: fs.ls(key, detail=True, refresh=True))
            except FileNotFoundError:
                found = []
            names = [e["name"].rsplit("/", 1)[-1] for e in found if e.get("type") == "file"]
        return sorted(f"{folder}/{n}" for n in names if n.endswith(suffix))

    def tree_bytes(self, folder: str) -> int:
        """Bytes of all files under ``folder``."""
        if not self.remote:
            return tree_bytes(self.local_path(folder))
        try:
            return int(self.call(folder, lambda fs, key: fs.du(key, total=True)))
        except FileNotFoundError:
            return 0

    # ------------------------------------------------------------------------------- writing

    def atomic_file(self, relative: str) -> AtomicFile:
        """A file that appears under ``relative``, complete, only on ``commit()``."""
        if not self.remote:
            return AtomicFile(self.local_path(relative))
        return StagedUpload(self, relative)

    def write_bytes(self, relative: str, data: bytes) -> None:
        """A whole small file, atomically: a rename on disk, one PUT on object storage."""
        if not self.remote:
            write_bytes_atomic(self.local_path(relative), data)
        else:
            self.call(relative, lambda fs, key: fs.pipe_file(key, data))

    def remove(self, relative: str) -> None:
        if not self.remote:
            self.local_path(relative).unlink(missing_ok=True)
            return
        try:
            self.call(relative, lambda fs, key: fs.rm_file(key))
        except FileNotFoundError:
            pass

    def remove_tree(self, folder: str) -> None:
        if not self.remote:
            shutil.rmtree(self.local_path(folder), ignore_errors=True)
            return
        try:
            self.call(folder, lambda fs, key: fs.rm(key, recursive=True))
        except FileNotFoundError:
            pass

    def check_writable(self) -> None:
        """Fail now, naming the output, if it cannot be written: a missing bucket, no credentials,
        a read-only prefix. A small probe object is written and removed."""
        if not self.remote:
            return
        probe = f".ssmspine-probe-{uuid.uuid4().hex}"
        try:
            self.write_bytes(probe, b"")
        except FileNotFoundError as exc:
            why = self.objects.calls.redact(reason(exc))
            raise OutputError(f"{self}: cannot be written: no such bucket or container ({why})") from exc
        except OutputError as exc:  # the probe's own failure: its reason, under the output's name
            cause = exc.__cause__
            why = self.objects.calls.why(cause) if isinstance(cause, Exception) else str(exc)
            raise OutputError(f"{self}: cannot be written: {why}") from exc
        self.remove(probe)


def as_storage(out: "str | os.PathLike | Storage", storage_options: Mapping[str, Any] | None = None) -> Storage:
    """``out`` as a :class:`Storage` (unchanged if it is one)."""
    return out if isinstance(out, Storage) else Storage(out, storage_options)


class StagedUpload(AtomicFile):
    """An :class:`AtomicFile` for object storage: written (and read back by its writer) in a
    local staging file, then uploaded whole on :meth:`commit`."""

    def __init__(self, storage: Storage, relative: str) -> None:
        self.storage = storage
        self.relative = relative
        self.staging = tempfile.mkdtemp(prefix="ssmspine-upload-")
        super().__init__(Path(self.staging, relative.replace("/", "_")))

    def commit(self) -> None:
        self.close()
        try:
            self.storage.call(self.relative, lambda fs, key: fs.put_file(str(self.tmp_path), key))
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)

    def abort(self) -> None:
        try:
            super().abort()
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)
