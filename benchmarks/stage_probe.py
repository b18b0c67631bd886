"""Runs a benchmark stage as a fresh process and measures it: wall, CPU and exact peak RSS."""

from __future__ import annotations

import contextlib
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

# Runs the stage as its child and reports the child's maxrss from wait4. The stage's own
# maxrss is not taken by the benchmark's process: Linux starts an exec'd child's maxrss at its
# parent's high-water mark (exec records the old, forked memory map's peak), so a stage
# spawned by a 300 MB driver would report at least 300 MB. This launcher, started with -S and
# importing only os and sys, is a few MB: below any stage's own peak.
LAUNCHER = """
import os, sys
report, argv = sys.argv[1], sys.argv[2:]
child = os.fork()
if child == 0:
    os.setpgid(0, 0)  # its own group: a SIGKILL of the stage leaves this launcher to reap it
    os.execv(argv[0], argv)
_, status, usage = os.wait4(child, 0)
with open(report, "w") as out:
    out.write(str(usage.ru_maxrss * 1024))
code = os.waitstatus_to_exitcode(status)
if code < 0:
    os.kill(os.getpid(), -code)
sys.exit(code)
"""


class StageProbe:
    """Runs one stage's process and measures it: wall, CPU, peak RSS of its process tree.

    The peak is exact, not sampled: the stage's maxrss from wait4 in a small launcher process,
    and at least each process's own high-water mark (VmHWM, which the kernel keeps), summed
    over the stage's processes alive at each 0.1 s sample (a killed stage reports no maxrss).
    A sampled current RSS would miss the short peaks of a short stage, which biased small runs
    low and their ratios high.
    """

    def __init__(self, command: list[str], environment: dict[str, str], log: Path) -> None:
        self.command, self.environment, self.log = command, environment, log
        self.peak_tree_bytes = 0

    def run(self, kill_when: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Run to the end (or SIGKILL its process group once kill_when() holds)."""
        started = time.perf_counter()
        report = self.log.with_name(f".maxrss-{os.getpid()}-{time.monotonic_ns()}")
        launcher = [sys.executable, "-S", "-c", LAUNCHER, str(report)]
        with self.log.open("ab") as output:
            process = subprocess.Popen(
                [*launcher, sys.executable, *self.command],
                stdout=output,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.environment},
                start_new_session=True,
            )
            stop = threading.Event()
            sampler = threading.Thread(target=self._sample, args=(process.pid, stop), daemon=True)
            sampler.start()
            killed = False
            while process.poll() is None:
                if kill_when is not None and not killed and kill_when():
                    _kill_stage(process.pid)
                    killed = True
                time.sleep(0.05)
            stop.set()
            sampler.join()
        wall = time.perf_counter() - started
        if report.exists():
            self.peak_tree_bytes = max(self.peak_tree_bytes, int(report.read_text()))
            report.unlink()
        return {"wall_s": round(wall, 2), "exit": process.returncode, "killed": killed}

    def _sample(self, pid: int, stop: threading.Event) -> None:
        try:
            launcher = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return
        while not stop.wait(0.1):
            try:
                stage = launcher.children(recursive=True)  # not the launcher itself
            except psutil.Error:
                continue
            total = sum(high_water_mark(process) for process in stage)
            self.peak_tree_bytes = max(self.peak_tree_bytes, total)


def _kill_stage(launcher_pid: int) -> None:
    """SIGKILL the stage's process group, not the launcher's: the launcher reaps the stage and
    exits by the same signal. (Killed together, the stage would outlive its parent as a zombie
    that a container's init may never reap, and its pid would look alive to the next run's
    lease check.)"""
    try:
        stages = psutil.Process(launcher_pid).children()
    except psutil.Error:
        stages = []
    for stage in stages:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(stage.pid, signal.SIGKILL)
    if not stages:  # not forked yet (or gone): the launcher's group holds everything
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher_pid, signal.SIGKILL)


def high_water_mark(process: psutil.Process) -> int:
    """A live process's peak RSS so far in bytes (VmHWM); its current RSS where that is unknown."""
    try:
        with open(f"/proc/{process.pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return int(process.memory_info().rss)
    except (OSError, ValueError, psutil.Error):
        return 0  # ended between listing and reading: the launcher's wait4 has the stage's


def children_cpu_seconds() -> float:
    """CPU seconds of every reaped child so far (RUSAGE_CHILDREN's maxrss is not a stage's
    peak: it starts at this process's own, see LAUNCHER)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
