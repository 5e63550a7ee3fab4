"""glibc's allocator, tuned so memory freed after a large request goes back to the system.

By default glibc raises its mmap threshold each time a large block is freed (up to 32 MiB),
so later large buffers come from per-thread heaps that keep their pages: a burst of big
prompts leaves the worker's RSS at its peak for good. A fixed threshold keeps every large
buffer mmapped (returned on free), and fewer arenas bound what the body threads can keep.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("steward")

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 1024 * 1024
ARENA_MAX = 4


def tune() -> bool:
    """True when applied (glibc only; elsewhere the platform's defaults stay)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_ARENA_MAX, ARENA_MAX) == 1
    if not ok:
        log.warning("could not tune the memory allocator; large requests may leave RSS high")
    return ok
