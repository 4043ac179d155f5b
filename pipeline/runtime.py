"""Process tuning for work on multi-MB buffers: glibc's malloc thresholds and thread counts.

Dask sets ``MALLOC_TRIM_THRESHOLD_`` low for its workers, and with it glibc stops adapting its
mmap threshold, so every multi-MB buffer of a sample becomes a fresh mmap whose pages fault in
one by one. That doubled a conversion task's CPU time and made ``verify`` spend most of its time
in the kernel (50 million page faults on 600 samples). Keeping such buffers on the heap costs
memory only up to one sample's working set. Every process that decodes samples calls
:func:`tune_worker` once.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

#: glibc ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Buffers up to this size come from the heap, not from a fresh mmap: a decoded field is at most tens of MB.
MMAP_THRESHOLD = 256 << 20
#: Free heap memory up to this size is kept rather than handed back to the kernel (and faulted in again).
TRIM_THRESHOLD = 1 << 30


def keep_buffers_on_heap() -> bool:
    """Raise glibc's mmap and trim thresholds in this process; False where there is no ``mallopt``."""
    process = ctypes.CDLL(None)  # the C library already loaded into this process
    if not hasattr(process, "mallopt"):  # not glibc: the defaults stand
        return False
    return bool(process.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(
        process.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    )


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@functools.cache
def tune_worker() -> None:
    """Make a Dask worker process fit for tasks that juggle multi-MB buffers, one task per core (once).

    Threads: torch and Blosc would each start a thread per core on top of the one task per core.
    Done in the task rather than in the cluster's environment so that it also holds on clusters
    started by the user (``--scheduler``).
    """
    import numcodecs.blosc

    numcodecs.blosc.set_nthreads(1)
    torch = sys.modules.get("torch")  # only where the task uses it: importing torch takes a second
    if torch is not None:
        torch.set_num_threads(1)
    keep_buffers_on_heap()
