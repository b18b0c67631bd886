"""Exclusive create and compare-and-swap, and the lease rules built on them (who may take over)."""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from features import files
from features.store.lease import LEASE_FILE, ViewLease, process_start_time
from features.store.lease_holder import process_state
from schemas.errors import StoreError

ROUNDS = 20


def _race(count: int, action: Callable[[int], bool]) -> list[bool]:
    """Run action(i) in count threads released together by a barrier; their results."""
    barrier = threading.Barrier(count)
    results: list[bool] = [False] * count

    def contender(position: int) -> None:
        barrier.wait()
        results[position] = action(position)

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _zombie_pid() -> subprocess.Popen[bytes]:
    """A child that has exited and is not reaped yet: /proc shows it, state Z."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    for _ in range(500):
        if process_state(process.pid) == "Z":
            return process
        threading.Event().wait(0.01)
    raise AssertionError("the child did not exit within 5 s")


def _write_lease(view: Path, **fields: object) -> bytes:
    record = {
        "owner": "run-old",
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_start": process_start_time(os.getpid()),
        "expires_at": (
            datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
        ).isoformat(),
        **fields,
    }
    data = json.dumps(record).encode()
    view.mkdir(parents=True, exist_ok=True)
    (view / LEASE_FILE).write_bytes(data)
    return data


def test_exactly_one_exclusive_create_wins(tmp_path) -> None:
    for round_number in range(ROUNDS):
        path = str(tmp_path / f"lease-{round_number}.json")
        payloads = [f"writer {i}".encode() * 1000 for i in range(4)]
        results = _race(4, lambda i, p=path, d=payloads: files.create_exclusive(p, d[i]))
        assert results.count(True) == 1
        assert Path(path).read_bytes() == payloads[results.index(True)]
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_exactly_one_compare_and_swap_wins(tmp_path) -> None:
    path = str(tmp_path / "lease.json")
    for round_number in range(ROUNDS):
        old = f"round {round_number}".encode()
        Path(path).write_bytes(old)
        payloads = [f"round {round_number} taker {i}".encode() for i in range(4)]
        results = _race(
            4, lambda i, p=path, o=old, d=payloads: files.replace_if_unchanged(p, o, d[i])
        )
        assert results.count(True) == 1
        assert Path(path).read_bytes() == payloads[results.index(True)]


def test_compare_and_delete_keeps_a_changed_file(tmp_path) -> None:
    path = tmp_path / "lease.json"
    path.write_bytes(b"theirs")
    assert not files.remove_if_unchanged(str(path), b"mine")
    assert not files.replace_if_unchanged(str(path), b"mine", b"new")
    assert path.read_bytes() == b"theirs"
    assert files.remove_if_unchanged(str(path), b"theirs") and not path.exists()
    assert not files.replace_if_unchanged(str(path), b"theirs", b"new") and not path.exists()


def test_filesystems_without_exclusive_create_warn_loudly(caplog) -> None:
    path = "memory://lease-test/lease.json"
    with caplog.at_level(logging.WARNING, logger="features.files"):
        assert files.create_exclusive(path, b"a")
        assert not files.create_exclusive(path, b"b")
        assert files.replace_if_unchanged(path, b"a", b"c")
        assert files.remove_if_unchanged(path, b"c")
    assert "cannot do exclusive creates" in caplog.text and "'memory'" in caplog.text


def test_a_live_holder_is_named_in_one_line_with_the_view(tmp_path) -> None:
    view = tmp_path / "store" / "view_a"
    first = ViewLease(str(view), "run-A")
    first.acquire()
    try:
        with pytest.raises(StoreError) as refused:
            ViewLease(str(view), "run-B").acquire()
        message = str(refused.value)
        assert "\n" not in message
        for part in (str(view), "run run-A", socket.gethostname(), f"pid {os.getpid()}"):
            assert part in message
        assert "lease expires at" in message and "--break-lease run-A" in message
    finally:
        first.release()
    assert not (view / LEASE_FILE).exists()


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"pid": None}, "is gone"),
        ({"pid": "zombie"}, "is gone"),
        ({"pid_start": "1"}, "belongs to another process"),
        ({"boot_id": "another-boot"}, "rebooted"),
        ({"host": "elsewhere", "expires_at": "2020-01-01T00:00:00+00:00"}, "expired"),
    ],
    ids=["dead-pid", "zombie-pid", "reused-pid", "rebooted", "other-host-expired"],
)
def test_a_dead_or_expired_holder_is_taken_over_at_once(tmp_path, caplog, fields, reason) -> None:
    if fields.get("pid", 0) is None:
        fields = {**fields, "pid": _dead_pid()}
    zombie = None
    if fields.get("pid") == "zombie":  # exited, never reaped (an orphan under a lax init)
        zombie = _zombie_pid()
        fields = {**fields, "pid": zombie.pid, "pid_start": process_start_time(zombie.pid)}
    if "boot_id" in fields and not Path("/proc/sys/kernel/random/boot_id").exists():
        pytest.fail("this test needs Linux /proc")
    _write_lease(tmp_path, **fields)
    lease = ViewLease(str(tmp_path), "run-new")
    with caplog.at_level(logging.WARNING, logger="features.store.lease"):
        lease.acquire()
    try:
        assert json.loads((tmp_path / LEASE_FILE).read_bytes())["owner"] == "run-new"
        assert lease.taken_over is not None and lease.taken_over["from_run"] == "run-old"
        assert reason in lease.taken_over["reason"] and "from run run-old" in caplog.text
    finally:
        lease.release()
        if zombie is not None:
            zombie.wait()


def test_a_holder_in_another_pid_namespace_is_judged_by_expiry_only(tmp_path) -> None:
    before = _write_lease(tmp_path, pid=_dead_pid(), pid_namespace="pid:[1]")
    with pytest.raises(StoreError, match="run run-old"):
        ViewLease(str(tmp_path), "run-new").acquire()
    assert (tmp_path / LEASE_FILE).read_bytes() == before


def test_another_hosts_unexpired_lease_is_respected(tmp_path) -> None:
    before = _write_lease(tmp_path, host="elsewhere", pid=_dead_pid())
    with pytest.raises(StoreError, match="host elsewhere"):
        ViewLease(str(tmp_path), "run-new").acquire()
    assert (tmp_path / LEASE_FILE).read_bytes() == before


def test_break_lease_takes_over_only_the_named_run(tmp_path) -> None:
    _write_lease(tmp_path, host="elsewhere")
    with pytest.raises(StoreError, match="run run-old"):
        ViewLease(str(tmp_path), "run-new").acquire(break_lease="run-other")
    lease = ViewLease(str(tmp_path), "run-new")
    lease.acquire(break_lease="run-old")
    assert lease.taken_over is not None and lease.taken_over["reason"] == "--break-lease run-old"
    lease.release()


def test_racing_takeovers_of_a_dead_lease_have_one_winner(tmp_path) -> None:
    for round_number in range(ROUNDS):
        view = tmp_path / f"view-{round_number}"
        _write_lease(view, pid=_dead_pid())
        leases = [ViewLease(str(view), f"run-{i}") for i in range(3)]

        def take(position: int, leases: list[ViewLease] = leases) -> bool:
            try:
                leases[position].acquire()
            except StoreError:
                return False
            return True

        results = _race(3, take)
        assert results.count(True) == 1
        winner = leases[results.index(True)]
        assert json.loads((view / LEASE_FILE).read_bytes())["owner"] == winner.owner
        winner.release()


def test_release_never_removes_a_lease_someone_else_took(tmp_path) -> None:
    lease = ViewLease(str(tmp_path), "run-A")
    lease.acquire()
    taken = _write_lease(tmp_path, owner="run-B")  # e.g. an operator's --break-lease run-A
    lease.release()
    assert (tmp_path / LEASE_FILE).read_bytes() == taken
