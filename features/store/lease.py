"""A writer lease per view: one run writes a view at a time; a dead holder is replaced at once."""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from features import files
from features.store.fence import LeaseFence
from features.store.lease_holder import (
    LEASE_FILE,
    LeaseHolder,
    boot_id,
    pid_namespace,
    process_start_time,
    takeover_reason,
)
from features.store.lease_holder import now as _now
from schemas.errors import LeaseLostError, StoreError

__all__ = [
    "DEFAULT_TTL_SECONDS",
    "LEASE_FILE",
    "LeaseFence",
    "LeaseHolder",
    "ViewLease",
    "process_start_time",
    "takeover_reason",
]

LOGGER = logging.getLogger(__name__)
DEFAULT_TTL_SECONDS = 120.0
# The fencing window is TTL / 12 (10 s at the default TTL): a process that verified the lease
# writes for at most this long on that verification, and a run that took the lease over
# waits as long before its first write (ARCHITECTURE.md, "Fencing").
FENCE_FRACTION = 1 / 12
# Each retry follows a concurrent change of the lease file (a release or another takeover).
_MAX_ATTEMPTS = 8


class ViewLease:
    """Exclusive, expiring writer lease on one view, renewed by a heartbeat thread while held.

    The lease file is created with files.create_exclusive (exactly one of any number of racing
    writers wins; readers never see a partial file). A lease is taken over, with a
    compare-and-swap so that of several racing takers exactly one wins, when its holder ran
    on this host and its process is gone (at once), when it expired (holders on other hosts,
    TTL 120 s), or when an operator names its run with --break-lease.

    Each holding has a fencing token (run id + random nonce) in the record: commit markers
    carry it, and every process that commits checks it against lease.json (LeaseFence). A
    heartbeat that cannot renew before the lease would expire marks it lost; ensure_held()
    then refuses every further commit.
    """

    def __init__(
        self,
        view_path: str,
        owner: str,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        fence_seconds: float | None = None,
    ) -> None:
        self.view_path = view_path
        self.path = files.join(view_path, LEASE_FILE)
        self.owner = owner
        self.ttl_seconds = ttl_seconds
        self.fence_seconds = (
            ttl_seconds * FENCE_FRACTION if fence_seconds is None else fence_seconds
        )
        self.token = f"{owner}:{uuid.uuid4().hex}"
        self.taken_over: dict[str, Any] | None = None
        self.lost = False
        self.lost_reason = ""
        self._held: bytes | None = None
        self._renewed_at = 0.0  # time.monotonic() before the last successful write of the record
        self._serial = 0
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lease now (acquired, not released, not lost)."""
        return self._held is not None and not self.lost

    def _record(self) -> bytes:
        self._serial += 1  # every write of the record is unique: a lost answer is settled by it
        record = {
            "owner": self.owner,
            "token": self.token,
            "serial": self._serial,
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

        After a takeover it waits the fencing window, so that no process of the previous
        holder still writes on a check it made before the takeover.

        Args:
            break_lease: take the lease from this run id even if it looks alive (operator).

        Raises:
            StoreError: another live writer holds the lease (one line naming it and the view).
        """
        files.makedirs(self.view_path)
        for _ in range(_MAX_ATTEMPTS):
            started = time.monotonic()
            record = self._record()
            if files.create_exclusive(self.path, record):
                self._hold(record, started)
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
            started = time.monotonic()
            record = self._record()
            if files.replace_if_unchanged(self.path, current, record):
                self._take_over(holder, reason, record, started)
                return
        raise StoreError(f"view {self.view_path}: its lease kept changing; try again")

    def _take_over(
        self, holder: LeaseHolder | None, reason: str, record: bytes, started: float
    ) -> None:
        previous = holder.describe() if holder is not None else "an unreadable lease"
        LOGGER.warning(
            "took over the lease of view %s from %s: %s; waiting %.1f s (the fencing window) "
            "before writing",
            self.view_path,
            previous,
            reason,
            self.fence_seconds,
        )
        self.taken_over = {
            "view": self.view_path,
            "from_run": holder.owner if holder is not None else None,
            "from_host": holder.host if holder is not None else None,
            "from_pid": holder.pid if holder is not None else None,
            "reason": reason,
            "at": _now().isoformat(timespec="seconds"),
        }
        self._hold(record, started)
        # Grace: the previous holder's processes write for at most fence_seconds after their
        # last successful check, which came before this takeover.
        time.sleep(self.fence_seconds)

    def _hold(self, record: bytes, started: float) -> None:
        self._held, self._renewed_at = record, started
        self._heartbeat = threading.Thread(target=self._renew, daemon=True, name="lease-heartbeat")
        self._heartbeat.start()

    def _renew(self) -> None:
        """Heartbeat: renew every TTL/3; on errors retry sooner; lost when taken over or when
        no renewal succeeded before the lease would expire (others may then take it)."""
        interval = self.ttl_seconds / 3
        while not self._stop.wait(interval):
            assert self._held is not None
            started = time.monotonic()
            record = self._record()
            try:
                renewed = files.replace_if_unchanged(self.path, self._held, record)
            except Exception as error:  # any failure: retry until expiry
                if self._expired_locally():
                    self._mark_lost(f"no renewal succeeded before it expired (last error: {error})")
                    return
                LOGGER.warning("view %s: lease renewal failed, retrying: %s", self.view_path, error)
                interval = min(self.ttl_seconds / 3, max(self.fence_seconds, 0.05))
                continue
            if not renewed:
                self._mark_lost("another run took it over")
                return
            self._held, self._renewed_at = record, started
            interval = self.ttl_seconds / 3

    def _expired_locally(self) -> bool:
        """Whether others may now consider the lease expired (a fencing window of margin)."""
        return time.monotonic() - self._renewed_at >= self.ttl_seconds - self.fence_seconds

    def _mark_lost(self, reason: str) -> None:
        self.lost, self.lost_reason = True, reason
        LOGGER.error(
            "lost the lease of view %s (%s); this run commits nothing more to it",
            self.view_path,
            reason,
        )

    def ensure_held(self) -> None:
        """Refuse to go on unless this run still holds the lease: not lost, renewed recently
        enough, and lease.json still carries this holding's token (one read).

        Raises:
            LeaseLostError: one line naming the view and why.
        """
        if self._held is None:
            raise LeaseLostError(f"view {self.view_path}: this run does not hold its lease")
        if not self.lost and self._expired_locally():
            self._mark_lost("not renewed before it expired")
        if not self.lost:
            LeaseFence(self.view_path, self.token, 0.0).check()
            return
        raise LeaseLostError(
            f"view {self.view_path}: this run lost its writer lease ({self.lost_reason}); it "
            "committed nothing after that. Check the view's run history, then re-run if needed"
        )

    def fence_settings(self) -> dict[str, Any]:
        """What a worker process needs to check this holding (LeaseFence.from_dict)."""
        return {"view_path": self.view_path, "token": self.token, "window": self.fence_seconds}

    def release(self) -> None:
        """Stop renewing and remove the lease if it is still ours."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if self._held is not None and not self.lost:
            try:
                files.remove_if_unchanged(self.path, self._held)
            except StoreError as error:  # expires on its own; never hide the run's own error
                LOGGER.warning("view %s: lease not released: %s", self.view_path, error)
        self._held = None

    @staticmethod
    @contextlib.contextmanager
    def acquire_all(
        view_paths: Sequence[str],
        owner: str,
        break_lease: str | None = None,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
    ) -> Iterator[list[ViewLease]]:
        """Hold the leases of several views (by path) for the duration of a with-block.

        Raises:
            StoreError: one of the views is held by another live writer (none stay held).
        """
        held: list[ViewLease] = []
        try:
            for path in view_paths:
                lease = ViewLease(path, owner, ttl_seconds)
                lease.acquire(break_lease)
                held.append(lease)
            yield held
        finally:
            for lease in reversed(held):
                lease.release()
