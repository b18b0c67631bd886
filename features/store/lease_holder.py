"""Who holds a view's writer lease, and when a holder may be taken over (dead, expired, named)."""

from __future__ import annotations

import datetime
import json
import os
import socket
from dataclasses import dataclass

LEASE_FILE = "lease.json"
# proc(5) states of a process that has exited: zombie, dead.
ZOMBIE_STATES = frozenset({"Z", "X"})


def now() -> datetime.datetime:
    """The current UTC time (lease expiry is recorded in UTC)."""
    return datetime.datetime.now(datetime.UTC)


def process_start_time(pid: int) -> str | None:
    """Start time of a live process, in clock ticks since boot (Linux /proc), else None.

    Together with the pid and the boot id it identifies a process: a pid reused after a crash
    has another start time.
    """
    fields = _stat_fields(pid)
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
    """Whether a process with this pid runs on this host (a zombie does not: it has exited,
    and in a container whose init does not reap orphans it may stay a zombie for good)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    return process_state(pid) not in ZOMBIE_STATES


def process_state(pid: int) -> str | None:
    """A process's state letter from /proc/PID/stat (R, S, D, Z, ...), else None (not Linux)."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name (field 3 of proc(5) on); [] if none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode("ascii", "replace")
    except OSError:
        return []
    return stat.rsplit(")", 1)[-1].split()  # the command name in () may hold spaces


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
    token: str = ""

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
                token=str(record.get("token", "")),
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
