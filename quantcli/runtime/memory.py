"""Memory policy of the runtime's forward passes (calibration, eval, KLD): activation-sized arrays are
allocated and freed by the thousand, and how the C library and the kernel back them costs more than the
arithmetic on some of them. `activation_memory()` is the one policy every caller takes."""

from __future__ import annotations

import ctypes
import platform
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np


@contextmanager
def activation_memory() -> Iterator[None]:
    """Plain 4 KB pages for new arrays and glibc's heap reused for them (the two functions below), for the
    duration; the previous settings come back after."""
    previous = madvise_hugepage(False)
    try:
        with reused_heap():
            yield
    finally:
        madvise_hugepage(previous)


def madvise_hugepage(enabled: bool) -> bool:
    """Turn NumPy's madvise(MADV_HUGEPAGE) of new arrays of 4 MB and more on or off; returns the previous
    setting. A forward pass allocates and frees gigabytes of activation-sized arrays (calibration); where the kernel compacts
    memory to back an madvised region with huge pages on first touch (transparent_hugepage/defrag
    `madvise`, the default), that fault path cost 10-20x the CPU time of plain 4 KB faults and a third of a
    calibration's run time on a 2-core VM. Plain pages keep the arrays' values, only the faults change."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1.26
    return bool(core.multiarray._set_madvise_hugepage(enabled))


# glibc's mallopt parameters (malloc.h) and their defaults.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_GLIBC_DEFAULT_THRESHOLD = 128 * 1024
_HEAP_THRESHOLD = 1 << 30


@contextmanager
def reused_heap() -> Iterator[None]:
    """Serve arrays below 1 GiB from glibc's heap and keep freed ones there, for the duration.

    By default glibc maps every allocation above its mmap threshold (at most 32 MB) fresh from the kernel
    and unmaps it on free, so each activation-sized array a forward pass allocates (MBs to hundreds of MB,
    dozens per block) is faulted in 4 KB page by page and zeroed by the kernel again: 13 million page
    faults and a tenth of a 64-sample GPTQ run's time, 450 thousand and a tenth of an 8-chunk eval's. From the heap, a freed array's pages are reused by
    the next one of its size. The heap is trimmed and glibc's defaults restored after (glibc only: other C
    libraries keep their own policy)."""
    if platform.libc_ver()[0] != "glibc":
        yield
        return
    libc = ctypes.CDLL(None)
    libc.mallopt(_M_MMAP_THRESHOLD, _HEAP_THRESHOLD)
    libc.mallopt(_M_TRIM_THRESHOLD, _HEAP_THRESHOLD)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)
        libc.malloc_trim(0)
