"""Download items: verify, write atomically, resume, and keep a per-item status table."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from PIL import Image

from features import files
from features.download.fetch import FetchConfig, fetch
from features.download.secrets import redact_text, redact_url
from schemas.labels import DOWNLOADS_SCHEMA, SUCCESS_STATUSES, DownloadStatus

LOGGER = logging.getLogger(__name__)
IMAGES_DIR = "images"
STATUS_FILE = "downloads.parquet"


@dataclass(frozen=True)
class DownloadItem:
    """One file to fetch into DEST/images/<filename>.

    Attributes:
        image_id: stable id.
        uri: where it comes from.
        filename: name under the images folder.
        sha256 / size: expected content digest and length, when known.
        split: official split, copied into the manifest.
        allow_local: whether a local uri is acceptable (false for URIs from remote lists).
    """

    image_id: str
    uri: str
    filename: str
    sha256: str | None = None
    size: int | None = None
    split: str | None = None
    allow_local: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (Beam elements travel as dicts)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DownloadItem:
        """Inverse of to_dict."""
        return cls(**data)


def record(
    item: DownloadItem,
    status: DownloadStatus,
    attempts: int,
    *,
    http_status: int | None = None,
    error: str | None = None,
    size: int | None = None,
    digest: str | None = None,
) -> dict[str, Any]:
    """One row of the status table; its uri and error carry no password, token or signature."""
    return {
        "image_id": item.image_id,
        "uri": redact_url(item.uri),
        "status": status.value,
        "http_status": http_status,
        "error": None if error is None else redact_text(error),
        "bytes": size,
        "sha256": digest,
        "attempts": attempts,
    }


def verify(data: bytes, item: DownloadItem) -> tuple[DownloadStatus, str | None]:
    """Size, content sha256 (when known) and that the bytes decode as an image."""
    if item.size is not None and len(data) != item.size:
        return DownloadStatus.SIZE_MISMATCH, f"expected {item.size} bytes, got {len(data)}"
    if item.sha256 is not None and hashlib.sha256(data).hexdigest() != item.sha256.lower():
        return DownloadStatus.CHECKSUM_MISMATCH, "content sha256 differs from the expected one"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                image.verify()
    except Exception as error:  # Pillow raises many types for bad input
        return DownloadStatus.DECODE_ERROR, f"not a decodable image: {error}"
    return DownloadStatus.OK, None


def _present(item: DownloadItem, target: Path) -> dict[str, Any] | None:
    if not target.is_file():
        return None
    data = target.read_bytes()
    status, _ = verify(data, item)
    if status is not DownloadStatus.OK:
        LOGGER.info("%s: existing file fails verification; fetching again", target)
        return None
    return record(
        item, DownloadStatus.PRESENT, 0, size=len(data), digest=hashlib.sha256(data).hexdigest()
    )


def process_item(
    item: DownloadItem, images_dir: Path, config: FetchConfig, rng: random.Random | None = None
) -> dict[str, Any]:
    """Skip a verified file already present, else fetch, verify and write it atomically."""
    target = images_dir / item.filename
    present = _present(item, target)
    if present is not None:
        return present
    outcome = fetch(item.uri, config, item.allow_local, rng=rng)
    if outcome.data is None:
        return record(
            item,
            outcome.status,
            outcome.attempts,
            http_status=outcome.http_status,
            error=outcome.error,
        )
    status, error = verify(outcome.data, item)
    if status is not DownloadStatus.OK:
        return record(
            item,
            status,
            outcome.attempts,
            http_status=outcome.http_status,
            error=error,
            size=len(outcome.data),
        )
    try:
        files.atomic_write_bytes(str(target), outcome.data)
    except OSError as error:  # disk full, permissions: the item fails, the run goes on
        return record(
            item,
            DownloadStatus.WRITE_ERROR,
            outcome.attempts,
            http_status=outcome.http_status,
            error=f"write failed: {error}",
        )
    return record(
        item,
        DownloadStatus.OK,
        outcome.attempts,
        http_status=outcome.http_status,
        size=len(outcome.data),
        digest=hashlib.sha256(outcome.data).hexdigest(),
    )


def process_shard(
    items: Sequence[DownloadItem],
    images_dir: Path,
    config: FetchConfig,
    workers: int,
    on_done: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Process items with at most `workers` concurrent fetches; records in item order."""
    os.makedirs(images_dir, exist_ok=True)

    def one(item: DownloadItem) -> dict[str, Any]:
        result = process_item(item, images_dir, config)
        if on_done is not None:
            on_done(result)
        return result

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, items))


def plan(
    items: Sequence[DownloadItem], previous: pa.Table | None, retry_failed: bool
) -> tuple[list[DownloadItem], list[dict[str, Any]]]:
    """Split items into (to process now, records kept from the previous run).

    A normal run processes items with no failure on record (present files are re-verified and
    skipped). --retry-failed processes only the items whose previous status was a failure.
    Rows match items by image_id, never by uri: the table's uris are redacted, and the items'
    credentials come from this run's command line, netrc or environment.
    """
    earlier = {row["image_id"]: row for row in previous.to_pylist()} if previous else {}
    todo, kept = [], []
    for item in items:
        row = earlier.get(item.image_id)
        failed = row is not None and row["status"] not in SUCCESS_STATUSES
        if failed == retry_failed or (not retry_failed and row is None):
            todo.append(item)
        elif row is not None:
            kept.append(row)
    return todo, kept


def read_status(dest: Path) -> pa.Table | None:
    """The previous status table, if any."""
    path = dest / STATUS_FILE
    return files.read_parquet(str(path)) if path.is_file() else None


def status_table(records: Iterable[dict[str, Any]]) -> pa.Table:
    """Records -> DOWNLOADS_SCHEMA table ordered by image_id."""
    rows = sorted(records, key=lambda row: row["image_id"])
    return pa.Table.from_pylist(rows, schema=DOWNLOADS_SCHEMA)


def shards_of(items: Sequence[DownloadItem], shard_size: int) -> list[list[DownloadItem]]:
    """Consecutive shards of at most shard_size items."""
    return [list(items[start : start + shard_size]) for start in range(0, len(items), shard_size)]
