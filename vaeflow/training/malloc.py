"""glibc malloc settings for processes that run torch steps on the CPU.

A training step frees and re-allocates the same activation and gradient buffers every time. With
glibc's defaults a process can end up handing those pages back to the kernel after each step and
faulting them in again on the next: measured on the quick image model (batch 128, 2 threads), about
6,000 page faults per step and 20–30% of the step time, where a process with the settings below has
about 400 (BENCHMARKS §5.3; ``tests/test_malloc.py`` measures it). The settings are the ceilings
glibc's own adaptive thresholds grow to: buffers up to 32 MB come from the heap, and up to 64 MB of
freed memory stays with the process for the next step.
"""

from __future__ import annotations

import ctypes
import os
import platform

# mallopt(3) parameters.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # what glibc pairs with it when it adapts the threshold itself

# Set by a user who tunes malloc themselves: left alone then.
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LD_PRELOAD")


def keep_freed_memory() -> bool:
    """Make this process keep freed buffers for reuse instead of returning them to the kernel.

    Returns whether the settings were applied: not on a C library other than glibc, nor where the
    environment already tunes malloc (``MALLOC_*_THRESHOLD_``, ``GLIBC_TUNABLES``, or a preloaded
    allocator such as jemalloc).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(os.environ.get(name) for name in _USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
