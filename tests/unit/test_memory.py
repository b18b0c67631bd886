"""features.memory: the glibc mmap threshold is fixed where glibc is the C library, else untouched."""

from __future__ import annotations

import platform
import subprocess
import sys

from features.memory import fix_mmap_threshold


def test_applied_exactly_where_the_c_library_is_glibc() -> None:
    on_glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert fix_mmap_threshold() is on_glibc


def test_freed_large_buffers_leave_the_process_once_fixed() -> None:
    # In a fresh process: free a 16 MiB buffer (which raises glibc's dynamic threshold), then
    # allocate and free 16 MiB blocks from 16 threads; with the threshold fixed, the RSS after
    # freeing is back near where it started.
    script = """
import sys, threading, numpy as np, psutil
from features.memory import fix_mmap_threshold
fixed = fix_mmap_threshold() if sys.argv[1] == "fix" else False
process = psutil.Process()
np.ones(16 << 20, np.uint8); before = process.memory_info().rss
def churn():
    for _ in range(4):
        block = np.ones(16 << 20, np.uint8); del block
threads = [threading.Thread(target=churn) for _ in range(16)]
[t.start() for t in threads]; [t.join() for t in threads]
print(fixed, (process.memory_info().rss - before) >> 20)
"""
    results = {}
    for mode in ("fix", "default"):
        output = subprocess.run(
            [sys.executable, "-c", script, mode], capture_output=True, text=True, check=True
        ).stdout.split()
        results[mode] = (output[0] == "True", int(output[1]))
    if results["fix"][0]:
        assert results["fix"][1] < 16  # MiB kept after freeing 64 blocks of 16 MiB
        assert results["default"][1] > results["fix"][1]  # what the setting is for (128 here)
