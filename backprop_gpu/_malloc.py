"""Keep freed array memory in the process, so a training step's arrays do not page-fault.

A training step allocates its outputs and gradients afresh (``layer.output``, ``dinputs``, ...)
and frees the previous step's. With glibc's default settings, arrays of a few MiB are either
``mmap``-ed and unmapped each time, or returned to the system by trimming the heap; either way
the next step touches brand-new pages, and the page faults cost about a quarter of a
[784, 256, 256, 10] step at batch 1024 (``benchmarks/alloc.py`` measures it side by side).

``tune()`` (called once when the package is imported) raises glibc's mmap threshold to 32 MiB
and its trim threshold to 128 MiB, so up to that much freed memory is kept for reuse. Peak
memory is unchanged; memory freed after a peak goes back to the system later (beyond 128 MiB
of free heap) or at exit. Other C libraries (musl, macOS) are left alone, and
``BACKPROP_GPU_MALLOC=0`` turns this off.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 128 * 2**20

tuned = False  # whether tune() changed the settings (reported by `backprop-gpu info`)


def tune() -> bool:
    """Apply the thresholds above when the C library is glibc; True when they were set."""
    global tuned
    if os.environ.get("BACKPROP_GPU_MALLOC", "1") == "0" or not _glibc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    # both explicitly: setting either one turns off glibc's own adjustment of the other
    tuned = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    return tuned


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None  # "glibc 2.36"; absent elsewhere
    except (AttributeError, ValueError, OSError):
        return False
