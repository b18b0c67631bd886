"""Return freed multi-megabyte buffers to the OS at once in processes that churn through them."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

LOGGER = logging.getLogger(__name__)
# glibc's mallopt parameter (malloc.h): allocations above it are mmap'd and unmapped on free.
M_MMAP_THRESHOLD = -3
# glibc's own initial threshold; fixing it switches off the dynamic raise below.
MMAP_THRESHOLD_BYTES = 128 * 1024


def fix_mmap_threshold() -> bool:
    """Keep glibc's mmap threshold at 128 KiB for this process.

    glibc raises the threshold each time a large mmap'd block is freed (up to 32 MiB), after
    which blocks of that size come from per-thread arenas and stay there when freed. A reader
    that decodes thousands of shards in 16 threads then holds more memory the more shards it
    reads (verify at 255,530 rows: 380 MB peak with shards of 1024 rows vs 288 MB at 25,553);
    with the threshold fixed, 266 MB vs 241 MB. Small allocations are unaffected.

    Returns:
        Whether the setting was applied (False off glibc, e.g. macOS or musl: nothing changes).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        applied = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):  # not glibc: no mallopt
        applied = False
    LOGGER.debug("fixed glibc mmap threshold at %d bytes: %s", MMAP_THRESHOLD_BYTES, applied)
    return applied
