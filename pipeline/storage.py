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
them) but never prints them, and URLs are named through :func:`~pipeline.urls.safe_url`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.parse
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

from pipeline.atomic import AtomicFile, write_bytes_atomic
from pipeline.checksums import file_sha256
from pipeline.errors import OutputError, UsageError
from pipeline.retry import reason, refusal, retried
from pipeline.sizes import tree_bytes
from pipeline.urls import is_url, safe_url, scheme

T = TypeVar("T")


def url_filesystem(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """The fsspec file system of ``url`` and the path in it. A URL fsspec cannot open is a
    :class:`~pipeline.errors.UsageError` naming it: an unknown scheme, a package the scheme needs
    (``s3fs`` for ``s3://``, ...) missing, a malformed URL."""
    import fsspec.core

    try:
        return fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    except ImportError as exc:
        why = f"the URL scheme {scheme(url)!r} needs a package that is not installed ({exc})"
        raise UsageError(f"{safe_url(url)}: {why}") from exc
    except Exception as exc:  # noqa: BLE001 - fsspec raises ValueError for an unknown scheme, others for bad URLs
        from fsspec.registry import known_implementations, registry

        if scheme(url) not in known_implementations and scheme(url) not in registry:
            why = f"unknown URL scheme {scheme(url)!r} (fsspec knows s3://, gs://, http(s)://, file://, ...)"
        else:
            why = f"not a usable URL ({type(exc).__name__}: {exc})"
        raise UsageError(f"{safe_url(url)}: {why}") from exc


class Storage:
    """An output's root; relative names such as ``wds/train-000000.tar`` address its files."""

    def __init__(self, root: str | os.PathLike, storage_options: Mapping[str, Any] | None = None) -> None:
        root = os.fspath(root)
        if root.startswith("file://"):
            root = root[len("file://") :]
        self.remote = is_url(root)
        self.root = root.rstrip("/") if self.remote else os.path.abspath(root)
        self.storage_options = dict(storage_options or {})
        self._fs: Any = None
        self._path = ""

    def __str__(self) -> str:
        return safe_url(self.root)

    __repr__ = __str__

    def __getstate__(self) -> dict:  # the file system is rebuilt in the process the storage arrives in
        return {**self.__dict__, "_fs": None}

    @property
    def fs(self) -> Any:
        """The fsspec file system of a remote root, created on first use in each process."""
        if self._fs is None:
            self._fs, self._path = url_filesystem(self.root, self.storage_options)
            self._path = self._path.rstrip("/")
        return self._fs

    def name(self, relative: str) -> str:
        """The full path or URL of ``relative``, for messages (without secrets)."""
        return f"{self}/{relative}" if self.remote else os.path.join(self.root, relative)

    def _key(self, relative: str) -> str:
        """``relative``'s path in the remote file system."""
        self.fs  # noqa: B018 - sets self._path
        return f"{self._path}/{relative}" if relative else self._path

    def local_path(self, relative: str = "") -> Path:
        """The local path of ``relative``; only for local roots."""
        if self.remote:
            raise OutputError(f"{self}: this operation needs a local directory")
        return Path(self.root, relative)

    def call(self, relative: str, operation: Callable[[], T]) -> T:
        """``operation()`` on the remote file system: transient failures retried, lasting ones as
        one :class:`OutputError` naming the object (``FileNotFoundError`` passes for callers)."""
        where = self.name(relative)

        def failure(error: Exception) -> OutputError:
            return OutputError(f"{where}: {self.redact(refusal(error, reading=False))}")

        return retried(where, operation, failure, passes=(FileNotFoundError,))

    def redact(self, text: str) -> str:
        """``text`` (a library's message) without the secrets the root URL may carry."""
        parts = urllib.parse.urlsplit(self.root) if self.remote else None
        for secret in (parts.password, parts.query, parts.fragment) if parts else ():
            if secret:
                text = text.replace(secret, "***")
        return text

    # ------------------------------------------------------------------------------- reading

    def exists(self, relative: str) -> bool:
        if not self.remote:
            return os.path.exists(self.local_path(relative))
        return self.call(relative, lambda: self.fs.exists(self._key(relative)))

    def size(self, relative: str) -> int | None:
        """The size of a file, or ``None`` if there is none."""
        if not self.remote:
            path = self.local_path(relative)
            return path.stat().st_size if path.is_file() else None
        try:
            return int(self.call(relative, lambda: self.fs.size(self._key(relative))))
        except FileNotFoundError:
            return None

    def read_bytes(self, relative: str) -> bytes:
        """A whole (small) file; ``FileNotFoundError`` if there is none."""
        if not self.remote:
            return self.local_path(relative).read_bytes()
        return self.call(relative, lambda: self.fs.cat_file(self._key(relative)))

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
            self.call(relative, lambda: self.fs.get_file(self._key(relative), str(path)))
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
                found = self.call(folder, lambda: self.fs.ls(self._key(folder), detail=True, refresh=True))
            except FileNotFoundError:
                found = []
            names = [e["name"].rsplit("/", 1)[-1] for e in found if e.get("type") == "file"]
        return sorted(f"{folder}/{n}" for n in names if n.endswith(suffix))

    def tree_bytes(self, folder: str) -> int:
        """Bytes of all files under ``folder``."""
        if not self.remote:
            return tree_bytes(self.local_path(folder))
        try:
            return int(self.call(folder, lambda: self.fs.du(self._key(folder), total=True)))
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
            self.call(relative, lambda: self.fs.pipe_file(self._key(relative), data))

    def remove(self, relative: str) -> None:
        if not self.remote:
            self.local_path(relative).unlink(missing_ok=True)
            return
        try:
            self.call(relative, lambda: self.fs.rm_file(self._key(relative)))
        except FileNotFoundError:
            pass

    def remove_tree(self, folder: str) -> None:
        if not self.remote:
            shutil.rmtree(self.local_path(folder), ignore_errors=True)
            return
        try:
            self.call(folder, lambda: self.fs.rm(self._key(folder), recursive=True))
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
            why = self.redact(reason(exc))
            raise OutputError(f"{self}: cannot be written: no such bucket or container ({why})") from exc
        except OutputError as exc:  # the probe's own failure: its reason, under the output's name
            cause = exc.__cause__
            why = self.redact(refusal(cause, reading=False)) if isinstance(cause, Exception) else str(exc)
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
            key = self.storage._key(self.relative)
            self.storage.call(self.relative, lambda: self.storage.fs.put_file(str(self.tmp_path), key))
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)

    def abort(self) -> None:
        try:
            super().abort()
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)
