"""Runs a benchmark stage as a fresh process and measures it: wall, CPU and exact peak RSS."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil


class StageProbe:
    """Runs one stage's process and measures it: wall, CPU, peak RSS of its process tree.

    The peak is exact, not sampled: each process's own high-water mark (VmHWM, which the kernel
    keeps), summed over the processes alive at each 0.2 s sample, and at least the stage
    process's maxrss that wait4 reports when it ends. (A sampled RSS misses the short peaks of
    a short stage, which biased small runs low and their ratios high.)
    """

    def __init__(self, command: list[str], environment: dict[str, str], log: Path) -> None:
        self.command, self.environment, self.log = command, environment, log
        self.peak_tree_bytes = 0

    def run(self, kill_when: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Run to the end (or SIGKILL its process group once kill_when() holds)."""
        started = time.perf_counter()
        with self.log.open("ab") as output:
            process = subprocess.Popen(
                [sys.executable, *self.command],
                stdout=output,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.environment},
                start_new_session=True,
            )
            stop = threading.Event()
            sampler = threading.Thread(target=self._sample, args=(process.pid, stop), daemon=True)
            sampler.start()
            killed = False
            status: int | None = None
            usage: Any = None
            while status is None:
                if kill_when is not None and not killed and kill_when():
                    os.killpg(process.pid, signal.SIGKILL)
                    killed = True
                time.sleep(0.05)
                pid, wait_status, wait_usage = os.wait4(process.pid, os.WNOHANG)
                if pid:
                    status, usage = wait_status, wait_usage
            process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
            stop.set()
            sampler.join()
        wall = time.perf_counter() - started
        # ru_maxrss is in KiB on Linux: the stage process's (or a reaped descendant's) peak.
        self.peak_tree_bytes = max(self.peak_tree_bytes, usage.ru_maxrss * 1024)
        return {"wall_s": round(wall, 2), "exit": process.returncode, "killed": killed}

    def _sample(self, pid: int, stop: threading.Event) -> None:
        try:
            root = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return
        while not stop.wait(0.2):
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            total = sum(high_water_mark(process) for process in tree)
            self.peak_tree_bytes = max(self.peak_tree_bytes, total)


def high_water_mark(process: psutil.Process) -> int:
    """A live process's peak RSS so far in bytes (VmHWM); its current RSS where that is unknown."""
    try:
        with open(f"/proc/{process.pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return int(process.memory_info().rss)
    except (OSError, ValueError, psutil.Error):
        return 0  # ended between listing and reading: wait4 (root) or a later sample has it


def children_usage() -> tuple[float, float]:
    """(CPU seconds, maxrss MB) of every reaped child so far (maxrss: the largest one)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024
