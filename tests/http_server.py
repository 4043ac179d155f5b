"""Real HTTP servers on 127.0.0.1 for the URL tests: a file server with ``Range`` support that logs
what it serves, and a flaky proxy that fails some requests the way real servers and networks do.

Both are plain ``http.server`` servers in threads of the test process; Dask workers and DataLoader
workers reach them over TCP like any other server.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import itertools
import re
import sys
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


@dataclass(frozen=True)
class Served:
    """One request a :class:`RangeServer` answered: ``start``/``end`` of its range (None without one)."""

    method: str
    path: str
    start: int | None
    end: int | None  # inclusive, as in the Range header
    status: int
    body_bytes: int


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves files under ``server.root`` with single-range ``Range`` support and keep-alive."""

    protocol_version = "HTTP/1.1"
    ranges = True

    def do_HEAD(self):
        self._answer(body=False)

    def do_GET(self):
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        path = Path(self.server.root) / urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        if not path.is_file():
            self._log(None, None, 404, 0)
            self.send_error(404)
            return
        size = path.stat().st_size
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "")) if self.ranges else None
        start, end = (0, size - 1) if match is None else (int(match[1]), min(int(match[2] or size - 1), size - 1))
        if start >= size:
            self._log(start, end, 416, 0)
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with open(path, "rb") as file:
            file.seek(start)
            data = file.read(end - start + 1) if body else b""
        status = 200 if match is None else 206
        self._log(start if match else None, end if match else None, status, len(data))
        self.send_response(status)
        if match is not None:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("ETag", f'"{size}-{path.stat().st_mtime_ns}"')
        self.end_headers()
        try:
            self.wfile.write(data)
        except ConnectionError:  # the client hung up (it does on purpose after an unwanted 200)
            self.close_connection = True

    def _log(self, start: int | None, end: int | None, status: int, body_bytes: int) -> None:
        self.server.requests.append(Served(self.command, self.path, start, end, status, body_bytes))

    def log_message(self, *args):
        pass


class _Quiet(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # clients hang up on purpose in these tests
            super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


class RangeServer(_Quiet):
    """A :class:`RangeHandler` server: ``requests`` lists what it answered, in order."""

    def __init__(self, root: Path, handler: type = RangeHandler) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.root = str(root)
        self.requests: list[Served] = []


class FlakyProxyHandler(http.server.BaseHTTPRequestHandler):
    """Forwards requests to ``server.upstream`` (reads, and an S3 server's writes too), failing some
    on the way (see :class:`FlakyProxy`)."""

    protocol_version = "HTTP/1.1"

    def do_HEAD(self):
        self._forward()

    def do_GET(self):
        self._forward()

    def do_PUT(self):
        self._forward()

    def do_POST(self):
        self._forward()

    def do_DELETE(self):
        self._forward()

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))  # read before any answer
        fate = self.server.fate(self.command, self.path, self.headers.get("Range"))
        if fate == "drop":  # closes the connection without an answer
            self.close_connection = True
            return
        if fate == "503":
            self.send_response(503, "Slow Down")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        upstream = http.client.HTTPConnection(self.server.upstream, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            response = upstream.getresponse()
            self.send_response(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() not in ("connection", "keep-alive", "transfer-encoding", "server", "date"):
                    self.send_header(name, value)
            self.end_headers()
            while chunk := response.read(1 << 16):
                self.wfile.write(chunk)
        except ConnectionError:  # the client hung up
            self.close_connection = True
        finally:
            upstream.close()

    def log_message(self, *args):
        pass


class FlakyProxy(_Quiet):
    """A proxy that answers 503 to every ``fail_every``-th request and drops every ``drop_every``-th.

    With ``always`` unset, a request that already failed once (same method, path and range) goes
    through when tried again, so that any reader retrying at least once gets every byte however the
    requests of many workers interleave; with it set, the chosen failure repeats forever.
    """

    def __init__(self, upstream_url: str, fail_every: int = 0, drop_every: int = 0, always: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), FlakyProxyHandler)
        self.upstream = urllib.parse.urlsplit(upstream_url).netloc
        self.fail_every, self.drop_every, self.always = fail_every, drop_every, always
        self.counter = itertools.count(1)
        self.failed: dict[tuple, str] = {}  # request -> how it failed
        self.failures = 0
        self.requests = 0
        self.lock = threading.Lock()

    def fate(self, method: str, path: str, byte_range: str | None) -> str:
        """``"drop"``, ``"503"`` or ``"pass"`` for the next request."""
        with self.lock:
            n, key = next(self.counter), (method, path, byte_range)
            self.requests = n
            if key in self.failed and not self.always:
                return "pass"
            fate = "pass"
            if self.drop_every and n % self.drop_every == 0:
                fate = "drop"
            elif self.fail_every and n % self.fail_every == 0:
                fate = "503"
            if fate != "pass":
                self.failed[key] = fate
                self.failures += 1
            return fate


@contextlib.contextmanager
def running(server: _Quiet) -> Iterator[_Quiet]:
    """``server`` answering in a thread until the block ends."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
