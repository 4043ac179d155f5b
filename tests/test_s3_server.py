"""The loopback S3 server the object-storage tests rely on is real and reachable as users reach theirs."""

from __future__ import annotations

import fsspec


def test_the_environment_reaches_the_s3_server(s3_server):
    bucket = s3_server.new_bucket()
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.pipe(f"s3://{bucket}/a/b.bin", b"0123456789")
    assert fs.cat_file(f"s3://{bucket}/a/b.bin", start=2, end=5) == b"234"
    assert fs.ls(f"{bucket}/a") == [f"{bucket}/a/b.bin"]
