"""A real S3-protocol server on 127.0.0.1 (moto's ``ThreadedMotoServer`` on a free port).

The tests reach it the way users reach their own object storage: through the environment
(``AWS_ENDPOINT_URL`` and credentials) that botocore, s3fs and every Dask worker started from the
test process read. :func:`server_environment` is what a separately started process needs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from dataclasses import dataclass
from typing import Iterator

from moto.server import ThreadedMotoServer


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str

    def environment(self) -> dict[str, str]:
        """The variables a process needs to reach this server with s3fs or boto."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def new_bucket(self, prefix: str = "ssmspine") -> str:
        """A fresh empty bucket's name (tests never share buckets)."""
        import fsspec

        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir(name)
        return name

    def upload(self, out: str | os.PathLike, parts: tuple[str, ...] = ("manifest.json", "ssmspine.zarr")) -> str:
        """The URL of a copy of ``parts`` of the converted output ``out`` in a fresh bucket (under a
        prefix, as outputs usually are), uploaded with s3fs as users upload theirs."""
        import fsspec

        url = f"s3://{self.new_bucket()}/datasets/ssmspine"
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        for part in parts:
            fs.put(os.path.join(out, part), f"{url}/{part}", recursive=True)
        return url


@contextlib.contextmanager
def running_s3_server() -> Iterator[S3Server]:
    """Starts the server, points this process's environment at it, and restores both after."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    s3 = S3Server(f"http://{host}:{port}")
    saved = {name: os.environ.get(name) for name in s3.environment()}
    os.environ.update(s3.environment())
    try:
        yield s3
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()
