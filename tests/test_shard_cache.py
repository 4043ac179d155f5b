"""The local cache of shards at URLs (pipeline/io/shard_cache.py): fills, hits, the limit, least recently used
eviction, entries in use, real processes sharing one cache, and fills killed midway.

"Shards" here are a few KB of random bytes: the cache never looks inside them. Processes are forked and
meet at Events and Barriers; where one must be sure another is waiting on a lock, it watches
``/proc/locks`` for that process's blocked request.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from pipeline.errors import OutputError, UsageError
from pipeline.io.file_locks import exclusive_if_free, lasting_lock
from pipeline.io.shard_cache import FOLDER, ShardCache

FORK = multiprocessing.get_context("fork")
KB = 1024
URL = "s3://bucket/out/wds/train-000000.tar"


class Shard(NamedTuple):
    data: bytes
    sha256: str
    size: int

    def download(self, into, counter=None) -> None:
        if counter is not None:
            with counter.get_lock():
                counter.value += 1
        into.write(self.data)


def shard(kb: int = 4) -> Shard:
    data = os.urandom(kb * KB)
    return Shard(data, hashlib.sha256(data).hexdigest(), len(data))


def files_under(folder: Path) -> set[str]:
    """Every file the cache has under its folder, but its lasting cache-wide lock."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != "evict.lock"}


def entries_bytes(cache_dir: Path) -> int:
    return sum(p.stat().st_size for p in (cache_dir / FOLDER).glob("*/*.tar"))


def blocked_on_a_lock(pid: int) -> bool:
    """Whether process ``pid`` waits for an ``flock`` lock now (the kernel lists the request in ``/proc/locks``)."""
    return any("-> FLOCK" in line and f" {pid} " in line for line in Path("/proc/locks").read_text().splitlines())


def wait_until(condition, what: str, limit_s: float = 30.0) -> None:
    """Poll ``condition`` (state another process will reach); fail naming ``what`` if it never comes."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.001)


def run_child(target, *args) -> int:
    child = FORK.Process(target=target, args=args)
    child.start()
    child.join(60)
    return child.exitcode


def test_a_miss_then_a_fill_then_hits_from_any_process(tmp_path):
    a, downloads = shard(), FORK.Value("i", 0)
    with ShardCache(tmp_path, 64 * KB) as cache:
        assert cache.cached(a.sha256, a.size) is None
        path = cache.fill(a.sha256, a.size, URL, lambda f: a.download(f, downloads))
        assert path == tmp_path / FOLDER / a.sha256[:2] / f"{a.sha256}.tar" and path.read_bytes() == a.data
        assert cache.fill(a.sha256, a.size, URL, lambda f: a.download(f, downloads)) == path  # a hit
    with ShardCache(tmp_path, 64 * KB) as other:
        assert other.cached(a.sha256, a.size) == path
        assert other.cached(a.sha256, a.size + 1) is None, "a copy of another size is not this shard"
    assert downloads.value == 1
    assert files_under(tmp_path / FOLDER) == {f"{a.sha256[:2]}/{a.sha256}.tar"}, "no lock or temporary file is left"


def wrong_bytes(f, a):
    f.write(a.data[:-1] + bytes([a.data[-1] ^ 1]))


def short(f, a):
    f.write(a.data[:-1])


def fails_midway(f, a):
    f.write(a.data[: a.size // 2])
    raise ConnectionResetError("the connection dropped")


@pytest.mark.parametrize(
    "download, error, words",
    [
        (wrong_bytes, OutputError, "its sha256 is"),
        (short, OutputError, f"downloaded {4 * KB - 1} bytes, the manifest says {4 * KB}"),
        (fails_midway, ConnectionResetError, "the connection dropped"),
    ],
    ids=["sha256", "size", "download error"],
)
def test_a_failed_fill_raises_one_line_and_leaves_nothing(tmp_path, download, error, words):
    a = shard()
    url = "https://reader:secret@host/out/wds/train-000000.tar?X-Amz-Signature=abc"
    with ShardCache(tmp_path, 64 * KB) as cache:
        with pytest.raises(error) as raised:
            cache.fill(a.sha256, a.size, url, lambda f: download(f, a))
        message = str(raised.value)
        assert words in message and "\n" not in message
        if error is OutputError:
            assert "https://reader@host/out/wds/train-000000.tar" in message and "secret" not in message
        assert files_under(tmp_path / FOLDER) == set()
        assert cache.fill(a.sha256, a.size, url, a.download).read_bytes() == a.data


def test_the_limit_holds_and_the_least_recently_used_entries_go_first(tmp_path):
    a, b, c, d, e = (shard() for _ in range(5))
    with ShardCache(tmp_path, 3 * 4 * KB) as cache:
        for s in (a, b, c):
            cache.fill(s.sha256, s.size, URL, s.download)
    for age, s in enumerate((a, b, c)):  # used long ago, a first
        os.utime(cache.entry_path(s.sha256), ns=(age * 10**9, age * 10**9))
    with ShardCache(tmp_path, 3 * 4 * KB) as cache:
        assert cache.cached(a.sha256, a.size)  # a hit: a is now the most recently used
        cache.release()
        cache.fill(d.sha256, d.size, URL, d.download)  # b goes (c, d held only by d's fill)
        assert [cache.entry_path(s.sha256).exists() for s in (a, b, c)] == [True, False, True]
        assert entries_bytes(tmp_path) <= 3 * 4 * KB
        cache.fill(e.sha256, e.size, URL, e.download)  # d is held: c goes, then a would
        assert [cache.entry_path(s.sha256).exists() for s in (a, c, d, e)] == [True, False, True, True]
        assert entries_bytes(tmp_path) <= 3 * 4 * KB


def test_entries_in_use_are_never_evicted_a_fill_that_does_not_fit_returns_none(tmp_path):
    a, b, c, downloads = shard(), shard(), shard(), FORK.Value("i", 0)
    with ShardCache(tmp_path, 2 * 4 * KB) as cache:
        cache.fill(a.sha256, a.size, URL, a.download)
        cache.fill(b.sha256, b.size, URL, b.download)
        assert cache.fill(c.sha256, c.size, URL, lambda f: c.download(f, downloads)) is None
        assert downloads.value == 0, "a shard that cannot fit is not downloaded"
        assert cache.cached(a.sha256, a.size) and cache.cached(b.sha256, b.size)
        os.utime(cache.entry_path(a.sha256), ns=(0, 0))  # a used before b
        cache.release()
        assert cache.fill(c.sha256, c.size, URL, c.download) is not None
        assert not cache.entry_path(a.sha256).exists() and cache.entry_path(b.sha256).exists()


def holds_until_told(cache_dir, a, holding, let_go) -> None:
    with ShardCache(cache_dir, 4 * KB) as cache:
        assert cache.fill(a.sha256, a.size, URL, a.download)
        holding.set()
        let_go.wait(30)


def test_an_entry_another_process_holds_is_never_evicted(tmp_path):
    a, b = shard(), shard()
    holding, let_go = FORK.Event(), FORK.Event()
    child = FORK.Process(target=holds_until_told, args=(tmp_path, a, holding, let_go))
    child.start()
    try:
        assert holding.wait(30)
        with ShardCache(tmp_path, 4 * KB) as cache:
            assert cache.fill(b.sha256, b.size, URL, b.download) is None
            assert cache.entry_path(a.sha256).read_bytes() == a.data
    finally:
        let_go.set()
        child.join(30)
    assert child.exitcode == 0
    with ShardCache(tmp_path, 4 * KB) as cache:  # the holder is gone: its entry may go
        assert cache.fill(b.sha256, b.size, URL, b.download) and not cache.entry_path(a.sha256).exists()


def releases_and_exits(cache: ShardCache) -> None:
    cache.release()
    os._exit(0)


def test_a_forked_child_that_releases_leaves_its_parents_holds(tmp_path):
    a, b = shard(), shard()
    with ShardCache(tmp_path, 4 * KB) as cache:
        cache.fill(a.sha256, a.size, URL, a.download)
        assert run_child(releases_and_exits, cache) == 0
        assert cache.fill(b.sha256, b.size, URL, b.download) is None, "a is still held by this process"


def test_an_evicted_entry_stays_readable_through_a_mapping(tmp_path):
    a, b = shard(), shard()
    with ShardCache(tmp_path, 4 * KB) as cache:
        with open(cache.fill(a.sha256, a.size, URL, a.download), "rb") as file:
            mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        cache.release()
        cache.fill(b.sha256, b.size, URL, b.download)
        assert not cache.entry_path(a.sha256).exists() and mapped[:] == a.data
        mapped.close()


def lives_until_told(started, let_go) -> None:
    started.set()
    let_go.wait(30)


@pytest.mark.parametrize("lock", [lasting_lock, exclusive_if_free], ids=["evict.lock", "an entry being evicted"])
def test_a_child_forked_during_a_momentary_lock_does_not_keep_it(tmp_path, lock):
    """A DataLoader worker forked while an eviction holds its locks would keep them for the whole run.
    (A fill's lock is removed with its file: no one can ask for the copy a child keeps.)"""
    path, started, let_go = tmp_path / "some.lock", FORK.Event(), FORK.Event()
    path.touch()
    with lock(path):
        child = FORK.Process(target=lives_until_told, args=(started, let_go))
        child.start()
        assert started.wait(30)
    try:
        with exclusive_if_free(path) as free:
            assert free, "the child still holds the lock"
    finally:
        let_go.set()
        child.join(30)


def fills_at_once(cache_dir, a, downloads, other_waited, start, results, pids, me) -> None:
    """Fill ``a`` at the same moment as the other process; whoever downloads waits until the other
    is blocked on the entry's lock, so that the other really asks while the fill is running."""
    pids[me] = os.getpid()

    def download(into) -> None:
        other = pids[1 - me]
        wait_until(lambda: blocked_on_a_lock(other), f"process {other} waiting for the fill of process {os.getpid()}")
        other_waited.set()
        a.download(into, downloads)

    with ShardCache(cache_dir, 64 * KB) as cache:
        start.wait(30)
        path = cache.fill(a.sha256, a.size, URL, download)
        results.put((os.getpid(), str(path), path.read_bytes() == a.data))


def test_two_processes_filling_one_entry_download_it_once(tmp_path):
    a, downloads, other_waited = shard(), FORK.Value("i", 0), FORK.Event()
    start, results, pids = FORK.Barrier(2), FORK.Queue(), FORK.Array("i", 2)
    children = [
        FORK.Process(target=fills_at_once, args=(tmp_path, a, downloads, other_waited, start, results, pids, me))
        for me in range(2)
    ]
    for child in children:
        child.start()
    found = sorted(results.get(timeout=60) for _ in children)
    for child in children:
        child.join(30)
    assert [child.exitcode for child in children] == [0, 0]
    assert downloads.value == 1 and other_waited.is_set()
    assert {path for _, path, _ in found} == {str(ShardCache(tmp_path, 0).entry_path(a.sha256))}
    assert all(same for _, _, same in found)


def dies_midway(cache_dir, a, halfway, go_on) -> None:
    def download(into) -> None:
        into.write(a.data[: a.size // 2])
        into.flush()
        halfway.set()
        if go_on is None:
            os.kill(os.getpid(), signal.SIGKILL)
        go_on.wait(30)
        into.write(a.data[a.size // 2 :])

    ShardCache(cache_dir, 64 * KB).fill(a.sha256, a.size, URL, download)


@pytest.mark.parametrize("cleaned_by", ["opening the cache", "the next fill of the entry"])
def test_a_fill_killed_midway_leaves_no_entry_and_is_cleaned_up(tmp_path, cleaned_by):
    a, downloads = shard(), FORK.Value("i", 0)
    opened_before = ShardCache(tmp_path, 64 * KB)
    child = FORK.Process(target=dies_midway, args=(tmp_path, a, FORK.Event(), None))
    child.start()
    child.join(30)
    assert child.exitcode == -signal.SIGKILL
    folder = tmp_path / FOLDER / a.sha256[:2]
    assert (folder / f"{a.sha256}.tar.tmp-{child.pid}").stat().st_size == a.size // 2
    assert not (folder / f"{a.sha256}.tar").exists()
    cache = ShardCache(tmp_path, 64 * KB) if cleaned_by == "opening the cache" else opened_before
    if cleaned_by == "opening the cache":
        assert files_under(tmp_path / FOLDER) == set(), "the dead fill's file and lock are gone"
    assert cache.fill(a.sha256, a.size, URL, lambda f: a.download(f, downloads)).read_bytes() == a.data
    assert downloads.value == 1 and files_under(tmp_path / FOLDER) == {f"{a.sha256[:2]}/{a.sha256}.tar"}


def test_a_live_fill_is_never_cleaned_up_or_counted(tmp_path):
    a, b, halfway, go_on = shard(), shard(), FORK.Event(), FORK.Event()
    child = FORK.Process(target=dies_midway, args=(tmp_path, a, halfway, go_on))
    child.start()
    try:
        assert halfway.wait(30)
        partial = tmp_path / FOLDER / a.sha256[:2] / f"{a.sha256}.tar.tmp-{child.pid}"
        with ShardCache(tmp_path, 4 * KB) as cache:  # opening looks for dead fills
            assert cache.fill(b.sha256, b.size, URL, b.download)  # a's half is not an entry: b fits
            assert partial.stat().st_size == a.size // 2
    finally:
        go_on.set()
        child.join(30)
    assert child.exitcode == 0 and not partial.exists()
    assert ShardCache(tmp_path, 64 * KB).cached(a.sha256, a.size).read_bytes() == a.data


def test_files_of_others_in_cache_dir_are_never_touched(tmp_path):
    a, b = shard(), shard()
    while b.sha256[:2] == a.sha256[:2]:
        b = shard()
    ours = tmp_path / FOLDER
    theirs = {
        tmp_path / "notes.txt": b"mine",
        tmp_path / f"{a.sha256}.tar": b"named like an entry, outside the cache's folder",
        tmp_path / f"{a.sha256}.tar.tmp-1": b"named like a dead fill, outside the cache's folder",
        ours / "README": b"mine",
        ours / a.sha256[:2] / f"{a.sha256}.tar.bak": b"not the cache's name",
        ours / "zz" / f"{b.sha256}.tar": b"not the cache's folder",
        ours / a.sha256[:2] / f"{b.sha256}.tar": b"an entry's name in another entry's folder",
    }
    for path, data in theirs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for _ in range(2):
        with ShardCache(tmp_path, 4 * KB) as cache:  # one shard at a time: each fill evicts the other
            for s in (a, b):
                assert cache.fill(s.sha256, s.size, URL, s.download)
                cache.release()
    assert {path: path.read_bytes() for path in theirs} == theirs


@pytest.mark.parametrize("limit", [0, 4 * KB - 1])
def test_a_limit_smaller_than_a_shard_never_caches_and_never_fails(tmp_path, limit):
    a, downloads = shard(), FORK.Value("i", 0)
    with ShardCache(tmp_path, limit) as cache:
        for _ in range(2):
            assert cache.fill(a.sha256, a.size, URL, lambda f: a.download(f, downloads)) is None
            assert cache.cached(a.sha256, a.size) is None
    assert downloads.value == 0 and files_under(tmp_path / FOLDER) == set()


def test_a_full_disk_is_a_miss_not_a_failure(tmp_path):
    a = shard()

    def disk_full(into) -> None:
        into.write(a.data[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    with ShardCache(tmp_path, 64 * KB) as cache:
        assert cache.fill(a.sha256, a.size, URL, disk_full) is None
    assert files_under(tmp_path / FOLDER) == set()


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda d: ShardCache(d, -1), "cache_limit must be a whole number of bytes >= 0, not -1"),
        (lambda d: ShardCache(d, 2.5), "cache_limit must be a whole number of bytes >= 0, not 2.5"),
        (lambda d: ShardCache(d / "a-file", 10), "is a file: give a folder"),
        (lambda d: ShardCache("s3://user:pw@bucket/cache", 10), "not a URL: s3://user@bucket/cache"),
        (lambda d: ShardCache(d, 10).cached("../../etc/passwd", 10), "64 lower-case hex digits, not '../../etc"),
        (lambda d: ShardCache(d, 10).fill("ab" * 32, -1, URL, print), "size must be a whole number of bytes"),
    ],
    ids=["negative limit", "fractional limit", "dir is a file", "dir is a URL", "not a sha256", "negative size"],
)
def test_misuse_is_one_line(tmp_path, call, words):
    (tmp_path / "a-file").write_bytes(b"")
    with pytest.raises(UsageError) as raised:
        call(tmp_path)
    assert words in str(raised.value) and "\n" not in str(raised.value)
