"""The fencing check any process makes before it commits: does its holding still own the lease?"""

from __future__ import annotations

import time
from typing import Any

from features import files
from features.store.lease_holder import LEASE_FILE, LeaseHolder, now
from schemas.errors import LeaseLostError


class LeaseFence:
    """Checks, in any process and at commit time, that a holding still owns a view's lease.

    A check reads lease.json (one GET) and requires this holding's token and an unexpired
    record; it is trusted for `window` seconds of this process's monotonic clock, measured
    from before the read. A run that takes the lease over waits at least `window` before
    writing, so a write made on a passed check never overlaps the next holder's writes.
    """

    def __init__(self, view_path: str, token: str, window: float) -> None:
        self.view_path = view_path
        self.path = files.join(view_path, LEASE_FILE)
        self.token = token
        self.window = window
        self._verified_at: float | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LeaseFence:
        """Inverse of ViewLease.fence_settings()."""
        return cls(str(data["view_path"]), str(data["token"]), float(data["window"]))

    def check(self) -> None:
        """Return if this holding still owns the lease; else raise.

        Raises:
            LeaseLostError: the lease is gone, another run's, or expired (names the view).
        """
        started = time.monotonic()
        if self._verified_at is not None and started - self._verified_at < self.window:
            return
        try:
            holder = LeaseHolder.parse(files.read_bytes(self.path))
        except FileNotFoundError:
            holder = None
        owner = self.token.split(":", 1)[0]
        if holder is None or holder.token != self.token:
            other = holder.describe() if holder is not None else "nobody (no lease file)"
            raise LeaseLostError(
                f"view {self.view_path}: run {owner} no longer holds the writer lease (now "
                f"held by {other}); it commits nothing more"
            )
        if holder.expires_at <= now():
            raise LeaseLostError(
                f"view {self.view_path}: the lease of run {owner} expired at "
                f"{holder.expires_at.isoformat(timespec='seconds')} without renewal; it "
                "commits nothing more"
            )
        self._verified_at = started
