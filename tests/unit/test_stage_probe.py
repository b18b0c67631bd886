"""The benchmarks' stage probe reports a stage's own peak RSS: not its driver's, not a sample."""

from __future__ import annotations

import signal
from pathlib import Path

import psutil

from benchmarks.stage_probe import StageProbe

MIB = 2**20
# Touches 96 MiB, frees it, then idles below it: a peak only the high-water mark still shows.
STAGE = (
    "import time; block = bytearray(96 * 2**20); block[::4096] = b'x' * len(block[::4096]); "
    "del block; time.sleep({sleep})"
)


def test_the_peak_is_the_stages_own_even_under_a_large_driver(tmp_path: Path) -> None:
    driver_ballast = bytearray(400 * MIB)
    driver_ballast[::4096] = b"y" * len(driver_ballast[::4096])  # the driver's peak: > 400 MiB
    probe = StageProbe(["-c", STAGE.format(sleep=0)], {}, tmp_path / "log")
    record = probe.run()
    assert record["exit"] == 0
    # 96 MiB plus an interpreter (~10-30 MiB); never the driver's 400 MiB.
    assert 96 * MIB <= probe.peak_tree_bytes < 200 * MIB, probe.peak_tree_bytes / MIB
    del driver_ballast


def test_a_killed_stage_reports_its_sampled_high_water_mark(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    write_pid = f"import os; open({str(marker)!r}, 'w').write(str(os.getpid()));"
    stage = STAGE.format(sleep=30).replace("del block;", f"del block; {write_pid}")
    probe = StageProbe(["-c", stage], {}, tmp_path / "log")
    record = probe.run(kill_when=lambda: marker.exists() and _after_a_sample(marker))
    assert record["killed"] and record["exit"] == -signal.SIGKILL
    assert 96 * MIB <= probe.peak_tree_bytes < 200 * MIB, probe.peak_tree_bytes / MIB
    # Reaped, not left a zombie that looks alive to a lease check (os.kill(pid, 0) succeeds).
    assert not psutil.pid_exists(int(marker.read_text()))


def _after_a_sample(marker: Path) -> bool:
    """True once the sampler (every 0.1 s) has had time to see the stage after its peak."""
    import time

    return time.time() - marker.stat().st_mtime > 0.5
