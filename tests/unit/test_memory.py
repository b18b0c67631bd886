"""features.memory: the glibc mmap threshold is fixed where glibc is the C library, else untouched."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from features.memory import fix_mmap_threshold

ON_GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# A fresh process, 'fix' or 'default' as argv[1]: free a 16 MiB buffer (which raises glibc's
# dynamic threshold to 16 MiB unless it is fixed), then allocate a 4 MiB block and print how
# many of its bytes glibc mmap'd (mallinfo2's hblkhd before and after), then churn 16 MiB
# blocks in 16 threads and print the RSS kept after they are freed (MiB).
_SCRIPT = """
import ctypes, sys, threading, numpy as np, psutil
from features.memory import fix_mmap_threshold
fixed = fix_mmap_threshold() if sys.argv[1] == "fix" else False
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split())]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
np.ones(16 << 20, np.uint8)
before = libc.mallinfo2().hblkhd
block = np.ones(4 << 20, np.uint8)
mapped = libc.mallinfo2().hblkhd - before
del block
process = psutil.Process()
rss = process.memory_info().rss
def churn():
    for _ in range(4):
        chunk = np.ones(16 << 20, np.uint8); del chunk
threads = [threading.Thread(target=churn) for _ in range(16)]
[t.start() for t in threads]; [t.join() for t in threads]
print(fixed, mapped >> 20, (process.memory_info().rss - rss) >> 20)
"""


def _run(mode: str) -> tuple[bool, int, int]:
    """(applied, MiB of the 4 MiB block mmap'd, MiB of RSS kept after the churn) in a child."""
    # The child decides its own malloc settings: tunables from the environment would hide them.
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("MALLOC_") and key != "GLIBC_TUNABLES"
    }
    output = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode],
        capture_output=True,
        text=True,
        check=True,
        env=environment,
    ).stdout.split()
    return output[0] == "True", int(output[1]), int(output[2])


def test_applied_exactly_where_the_c_library_is_glibc() -> None:
    assert fix_mmap_threshold() is ON_GLIBC


@pytest.mark.skipif(not ON_GLIBC, reason="mallopt and mallinfo2 are glibc's")
def test_large_blocks_are_mapped_and_freed_blocks_leave_the_process_once_fixed() -> None:
    applied, fixed_mapped, fixed_kept = _run("fix")
    assert applied
    assert fixed_mapped >= 4  # the 4 MiB block was mmap'd: its free unmaps it
    assert fixed_kept < 16  # MiB kept after freeing 64 blocks of 16 MiB from 16 threads
    _, default_mapped, _ = _run("default")
    # What the setting is for: by default, glibc's threshold rose past 4 MiB with the first
    # free, so the block came from the heap, where freed memory may stay (how much depends on
    # arenas and thread timing, so only the deterministic part is compared).
    assert default_mapped == 0
