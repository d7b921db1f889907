"""glibc malloc: keeping freed buffers for the next training step, and handing freed memory back.

Keeping (``keep_freed_memory``): a training step frees and re-allocates the same activation and
gradient buffers every time. With glibc's defaults a process can end up handing those pages back to
the kernel after each step and faulting them in again on the next: measured on the quick image model
(batch 128, 2 threads), about 6,000 page faults per step and 20–30% of the step time, where a
process with the settings below has about 400 (BENCHMARKS §5.3; ``tests/test_malloc.py`` measures it). The settings are the ceilings
glibc's own adaptive thresholds grow to: buffers up to 32 MB come from the heap, and up to 64 MB of
freed memory stays with the process for the next step.

Handing back (``release_freed_memory``): a process that drops a large data set and then starts
another phase (``prepare`` saving its splits, then computing the test split's reference statistics)
would otherwise carry the freed pages, scattered between live objects, into the next phase's peak.
"""

from __future__ import annotations

import ctypes
import os
import platform
from typing import Any

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
    if any(os.environ.get(name) for name in _USER_SETTINGS):
        return False
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def release_freed_memory() -> bool:
    """Collect garbage, then return the heap's free pages to the kernel (glibc's ``malloc_trim``,
    which also releases whole free pages between live allocations). Returns whether any memory was
    returned; False on a C library other than glibc."""
    import gc

    gc.collect()
    trim = _glibc("malloc_trim")
    if trim is None:
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(trim(0))


def _glibc(name: str) -> Any:
    """glibc's function ``name``, or None on another C library or system."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
