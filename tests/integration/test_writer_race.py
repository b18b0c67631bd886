"""Two writers started at the same instant on a new store: exactly one proceeds, nothing is lost."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipelines import extract
from tests.helpers.tiny_extract import VIEW, extract_argv, store_fingerprint, tiny_manifest

ROUNDS = 20
# One line, naming the holder (run id, host, pid, expiry) and the view path.
REFUSAL = re.compile(
    r"^error: view (?P<view>\S+) is being written by run (?P<run>\S+) \(host \S+, pid \d+, "
    r"lease expires at \S+\); .*--break-lease (?P=run)$"
)
# A child that imports the CLI, waits on a barrier, then runs what `python -m` runs: main().
CHILD = (
    "import os, sys\n"
    "from pipelines.extract import main\n"
    "ready, go = int(sys.argv[1]), int(sys.argv[2])\n"
    "os.write(ready, b'r')\n"
    "os.read(go, 1)\n"
    "sys.argv = ['pipelines.extract', *sys.argv[3:]]\n"
    "main()\n"
)


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The tiny manifest and the fingerprint of a clean, uncontested run (warms the model)."""
    root = tmp_path_factory.mktemp("race")
    manifest = tiny_manifest(root / "sample")
    assert extract.run(extract_argv(manifest, root / "clean")) == 0
    return {"root": root, "manifest": manifest, "clean": store_fingerprint(root / "clean")}


def _refusals(stderr: str) -> list[re.Match[str]]:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    matches = [REFUSAL.match(line) for line in lines]
    assert all(matches), lines
    return [match for match in matches if match is not None]


def _race_in_process(argv: list[str]) -> list[int]:
    """Exit codes of two extract.run(argv) calls in threads released together by a barrier."""
    barrier = threading.Barrier(2)
    codes: list[int] = []

    def writer() -> None:
        barrier.wait()
        codes.append(extract.run(argv))

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return codes


def test_in_process_writers_released_together_20_times(job, capsys) -> None:
    for round_number in range(ROUNDS):
        store = Path(job["root"]) / f"round-{round_number}"
        argv = extract_argv(Path(job["manifest"]), store)
        codes = _race_in_process(argv)
        stderr = capsys.readouterr().err
        assert sorted(codes) == [0, 1], (round_number, stderr)
        assert "Traceback" not in stderr
        (refusal,) = _refusals(stderr)
        assert refusal["view"] == str(store / VIEW)
        assert store_fingerprint(store) == job["clean"], round_number


def _watch(
    children: list[subprocess.Popen[str]], commits: Path
) -> tuple[dict[int, float], float | None]:
    """Poll until both children exit: when each exited and when the first commit marker
    appeared in `commits`, in seconds from now (10 ms resolution)."""
    started = time.perf_counter()
    finished: dict[int, float] = {}
    first_commit: float | None = None
    while len(finished) < 2:
        for position, child in enumerate(children):
            if position not in finished and child.poll() is not None:
                finished[position] = time.perf_counter() - started
        if first_commit is None and any(commits.glob("shard-*.json")):
            first_commit = time.perf_counter() - started
        time.sleep(0.01)
    return finished, first_commit


def test_cli_processes_released_together(job) -> None:
    store = Path(job["root"]) / "processes"
    ready_read, ready_write = os.pipe()
    go_read, go_write = os.pipe()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-c", CHILD, str(ready_write), str(go_read)]
    children = [
        subprocess.Popen(
            [*command, *extract_argv(Path(job["manifest"]), store)],
            pass_fds=(ready_write, go_read),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    assert os.read(ready_read, 1) + os.read(ready_read, 1) == b"rr"  # both imported
    os.write(go_write, b"gg")
    finished, first_commit = _watch(children, store / VIEW / "commits")
    outputs = [child.communicate() for child in children]
    for descriptor in (ready_read, ready_write, go_read, go_write):
        os.close(descriptor)
    codes = [child.returncode for child in children]
    assert sorted(codes) == [0, 1], outputs
    loser = codes.index(1)
    loser_stderr = outputs[loser][1]
    assert loser_stderr.strip().count("\n") == 0, loser_stderr  # one line, no traceback
    (refusal,) = _refusals(loser_stderr)
    assert refusal["view"] == str(store / VIEW)
    assert store_fingerprint(store) == job["clean"]
    # Refused at once, at the lease: gone before the winner has committed its first shard
    # (a relative order within this run, so a slow machine slows both sides alike).
    assert first_commit is not None, "the winner committed no shard"
    assert finished[loser] < first_commit, (finished, first_commit)
    assert finished[loser] < finished[1 - loser]
