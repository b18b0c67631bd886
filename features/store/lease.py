"""A writer lease per view: one run writes a view at a time; a dead holder is replaced at once."""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from features import files
from schemas.errors import StoreError

LOGGER = logging.getLogger(__name__)
LEASE_FILE = "lease.json"
DEFAULT_TTL_SECONDS = 120.0
# Each retry follows a concurrent change of the lease file (a release or another takeover).
_MAX_ATTEMPTS = 8


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def process_start_time(pid: int) -> str | None:
    """Start time of a live process, in clock ticks since boot (Linux /proc), else None.

    Together with the pid and the boot id it identifies a process: a pid reused after a crash
    has another start time.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the command name in () may hold spaces
    return fields[19] if len(fields) > 19 else None  # field 22 of proc(5): starttime


def boot_id() -> str | None:
    """This boot's random id (Linux), so a lease from before a reboot is known dead."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip() or None
    except OSError:
        return None


def pid_namespace() -> str | None:
    """This process's pid namespace (Linux): pids are only comparable within one namespace."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds a lease, as recorded in lease.json."""

    owner: str
    host: str
    pid: int
    expires_at: datetime.datetime
    pid_start: str | None = None
    boot_id: str | None = None
    pid_namespace: str | None = None

    @classmethod
    def parse(cls, data: bytes) -> LeaseHolder | None:
        """The holder recorded in a lease file's bytes; None if they are not a lease."""
        try:
            record = json.loads(data)
            expires_at = datetime.datetime.fromisoformat(record["expires_at"])
            return cls(
                owner=str(record["owner"]),
                host=str(record["host"]),
                pid=int(record["pid"]),
                expires_at=expires_at
                if expires_at.tzinfo is not None
                else expires_at.replace(tzinfo=datetime.UTC),
                pid_start=record.get("pid_start"),
                boot_id=record.get("boot_id"),
                pid_namespace=record.get("pid_namespace"),
            )
        except (ValueError, TypeError, KeyError):
            return None

    def describe(self) -> str:
        """'run R (host H, pid P, lease expires at T)'."""
        return (
            f"run {self.owner} (host {self.host}, pid {self.pid}, lease expires at "
            f"{self.expires_at.isoformat(timespec='seconds')})"
        )

    def death_reason(self) -> str | None:
        """Why this holder's process is certainly dead (same host only), else None."""
        if self.host != socket.gethostname():
            return None  # another host: only the expiry rule applies
        if self.pid_namespace and pid_namespace() not in (None, self.pid_namespace):
            return None  # another container sharing the host name: its pids are not ours
        if self.boot_id and boot_id() not in (None, self.boot_id):
            return "its host has rebooted since"
        if not pid_alive(self.pid):
            return f"its process {self.pid} is gone"
        started = process_start_time(self.pid)
        if self.pid_start and started is not None and started != self.pid_start:
            return f"pid {self.pid} now belongs to another process"
        return None


def takeover_reason(
    holder: LeaseHolder | None, break_lease: str | None, now: datetime.datetime
) -> str | None:
    """Why the current lease may be taken over, or None if its holder must be respected.

    Args:
        holder: the recorded holder (None: the file is not a readable lease).
        break_lease: the run id an operator asked to take the lease from, if any.
        now: the current time.
    """
    if holder is None:
        return "the lease file is unreadable"
    if break_lease is not None and break_lease == holder.owner:
        return f"--break-lease {break_lease}"
    dead = holder.death_reason()
    if dead is not None:
        return dead
    if holder.expires_at <= now:
        return f"its lease expired at {holder.expires_at.isoformat(timespec='seconds')}"
    return None


class ViewLease:
    """Exclusive, expiring writer lease on one view, renewed by a heartbeat thread while held.

    The lease file is created with files.create_exclusive (exactly one of any number of racing
    writers wins; readers never see a partial file). A lease is taken over, with a
    compare-and-swap so that of several racing takers exactly one wins, when its holder ran
    on this host and its process is gone (at once), when it expired (holders on other hosts,
    TTL 120 s), or when an operator names its run with --break-lease.
    """

    def __init__(
        self, view_path: str, owner: str, ttl_seconds: float = DEFAULT_TTL_SECONDS
    ) -> None:
        self.view_path = view_path
        self.path = files.join(view_path, LEASE_FILE)
        self.owner = owner
        self.ttl_seconds = ttl_seconds
        self.taken_over: dict[str, Any] | None = None
        self.lost = False
        self._held: bytes | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lease now (acquired, not released, not lost)."""
        return self._held is not None and not self.lost

    def _record(self) -> bytes:
        record = {
            "owner": self.owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_start": process_start_time(os.getpid()),
            "boot_id": boot_id(),
            "pid_namespace": pid_namespace(),
            "expires_at": (_now() + datetime.timedelta(seconds=self.ttl_seconds)).isoformat(),
        }
        return json.dumps(record).encode()

    def acquire(self, break_lease: str | None = None) -> None:
        """Take the lease, taking it over from a dead, expired or named holder; else raise.

        Args:
            break_lease: take the lease from this run id even if it looks alive (operator).

        Raises:
            StoreError: another live writer holds the lease (one line naming it and the view).
        """
        files.makedirs(self.view_path)
        for _ in range(_MAX_ATTEMPTS):
            record = self._record()
            if files.create_exclusive(self.path, record):
                self._hold(record)
                return
            try:
                current = files.read_bytes(self.path)
            except FileNotFoundError:
                continue  # released in between: try to create it again
            holder = LeaseHolder.parse(current)
            reason = takeover_reason(holder, break_lease, _now())
            if reason is None:
                assert holder is not None
                raise StoreError(
                    f"view {self.view_path} is being written by {holder.describe()}; wait for "
                    f"it to finish, or if it is dead re-run with --break-lease {holder.owner}"
                )
            record = self._record()
            if files.replace_if_unchanged(self.path, current, record):
                self._take_over(holder, reason, record)
                return
        raise StoreError(f"view {self.view_path}: its lease kept changing; try again")

    def _take_over(self, holder: LeaseHolder | None, reason: str, record: bytes) -> None:
        previous = holder.describe() if holder is not None else "an unreadable lease"
        LOGGER.warning(
            "took over the lease of view %s from %s: %s", self.view_path, previous, reason
        )
        self.taken_over = {
            "view": self.view_path,
            "from_run": holder.owner if holder is not None else None,
            "from_host": holder.host if holder is not None else None,
            "from_pid": holder.pid if holder is not None else None,
            "reason": reason,
            "at": _now().isoformat(timespec="seconds"),
        }
        self._hold(record)

    def _hold(self, record: bytes) -> None:
        self._held = record
        self._heartbeat = threading.Thread(target=self._renew, daemon=True, name="lease-heartbeat")
        self._heartbeat.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_seconds / 3):
            assert self._held is not None
            record = self._record()
            if not files.replace_if_unchanged(self.path, self._held, record):
                self.lost = True
                LOGGER.error(
                    "lost the lease of view %s (another run took it over); this run's "
                    "remaining writes may conflict with it",
                    self.view_path,
                )
                return
            self._held = record

    def release(self) -> None:
        """Stop renewing and remove the lease if it is still ours."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if self._held is not None and not self.lost:
            files.remove_if_unchanged(self.path, self._held)
        self._held = None

    @staticmethod
    @contextlib.contextmanager
    def acquire_all(
        view_paths: Sequence[str], owner: str, break_lease: str | None = None
    ) -> Iterator[list[ViewLease]]:
        """Hold the leases of several views (by path) for the duration of a with-block.

        Raises:
            StoreError: one of the views is held by another live writer (none stay held).
        """
        held: list[ViewLease] = []
        try:
            for path in view_paths:
                lease = ViewLease(path, owner)
                lease.acquire(break_lease)
                held.append(lease)
            yield held
        finally:
            for lease in reversed(held):
                lease.release()
