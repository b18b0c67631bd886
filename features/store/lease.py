"""A writer lease per view: a second concurrent writer gets a clear error instead of interleaving."""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from features import files
from schemas.errors import StoreError

LOGGER = logging.getLogger(__name__)
LEASE_FILE = "lease.json"
DEFAULT_TTL_SECONDS = 120.0


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class ViewLease:
    """Exclusive, expiring writer lease on one view, renewed by a heartbeat thread while held.

    The lease file is made with files.create_exclusive, so exactly one of two racing writers
    wins, on local disks and on S3/GCS (conditional creates). An expired lease (a crashed
    writer) is taken over with a compare-and-swap.
    """

    def __init__(
        self, view_path: str, owner: str, ttl_seconds: float = DEFAULT_TTL_SECONDS
    ) -> None:
        self.path = files.join(view_path, LEASE_FILE)
        self.owner = owner
        self.ttl_seconds = ttl_seconds
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def _record(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "expires_at": (_now() + datetime.timedelta(seconds=self.ttl_seconds)).isoformat(),
        }

    def _current(self) -> dict[str, Any] | None:
        try:
            return self._parse(files.read_bytes(self.path))
        except FileNotFoundError:
            return None

    @staticmethod
    def _parse(data: bytes) -> dict[str, Any] | None:
        try:
            return dict(json.loads(data))
        except ValueError:
            return None

    def _create_exclusive(self) -> bool:
        # Exclusive everywhere files.create_exclusive is: local disks (hard link), S3
        # (If-None-Match: *) and GCS (ifGenerationMatch=0); elsewhere it logs a warning.
        return files.create_exclusive(self.path, json.dumps(self._record()).encode())

    def acquire(self) -> None:
        """Take the lease or raise.

        Raises:
            StoreError: another live writer holds the lease (the message names it).
        """
        if self._create_exclusive():
            self._start_heartbeat()
            return
        try:
            current = files.read_bytes(self.path)
        except FileNotFoundError:
            current = b""  # released in between: the takeover below creates it
        holder = self._parse(current)
        if holder is not None and datetime.datetime.fromisoformat(holder["expires_at"]) > _now():
            raise StoreError(
                f"view at {self.path.rsplit('/', 2)[0]} is being written by run {holder['owner']} "
                f"(host {holder['host']}, pid {holder['pid']}); its lease expires at "
                f"{holder['expires_at']}. Wait for it, or remove {self.path} if that run is dead."
            )
        LOGGER.warning("taking over an expired lease from %s", holder)
        # Compare-and-swap: of several writers taking over the same expired lease, one wins.
        record = json.dumps(self._record()).encode()
        if not files.replace_if_unchanged(self.path, current or None, record):
            raise StoreError(
                f"view at {self.path.rsplit('/', 2)[0]}: another run took over its expired lease "
                f"at the same time; see {self.path}"
            )
        self._start_heartbeat()

    def _start_heartbeat(self) -> None:
        self._heartbeat = threading.Thread(target=self._renew, daemon=True, name="lease-heartbeat")
        self._heartbeat.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_seconds / 3):
            files.atomic_write_text(self.path, json.dumps(self._record()))

    def release(self) -> None:
        """Stop renewing and remove the lease if it is still ours."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        current = self._current()
        if current is not None and current["owner"] == self.owner:
            files.remove_file(self.path)

    @staticmethod
    @contextlib.contextmanager
    def acquire_all(views: Sequence[Any], owner: str) -> Iterator[list[ViewLease]]:
        """Hold the leases of several views for the duration of a with-block."""
        held: list[ViewLease] = []
        try:
            for view in views:
                lease = ViewLease(view.path, owner)
                lease.acquire()
                held.append(lease)
            yield held
        finally:
            for lease in reversed(held):
                lease.release()
