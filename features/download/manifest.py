"""Build an image manifest (ids, sizes, digests) from a folder and an optional label CSV."""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import warnings
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from PIL import Image

from schemas.errors import ManifestError
from schemas.tables import MANIFEST_SCHEMA

LOGGER = logging.getLogger(__name__)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


@dataclass(frozen=True)
class ImageEntry:
    """One file to index, with its id and optional split."""

    image_id: str
    path: Path
    split: str | None = None


def scan_images(directory: Path) -> list[Path]:
    """Image files under a directory (recursive), sorted for determinism."""
    if not directory.is_dir():
        raise ManifestError(f"--images {directory}: not a directory")
    found = [
        Path(root) / name
        for root, _, names in os.walk(directory)
        for name in names
        if Path(name).suffix.lower() in IMAGE_SUFFIXES
    ]
    return sorted(found)


def entries_from_folder(directory: Path) -> list[ImageEntry]:
    """One entry per image file, id = file stem."""
    return [ImageEntry(path.stem, path) for path in scan_images(directory)]


def entries_from_csv(directory: Path, labels_csv: Path) -> list[ImageEntry]:
    """Entries listed in a CSV with columns filename (relative to the folder), image_id, split.

    `image_id` and `split` are optional; without image_id the file stem is the id.

    Raises:
        ManifestError: missing column, or an empty filename, naming the CSV line.
    """
    with labels_csv.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "filename" not in reader.fieldnames:
            raise ManifestError(
                f"--labels {labels_csv}: needs a 'filename' column (found {reader.fieldnames})"
            )
        entries = []
        for record in reader:
            line_number = reader.line_num  # physical line: DictReader skips blank lines
            filename = (record.get("filename") or "").strip()
            if not filename:
                raise ManifestError(f"--labels {labels_csv}:{line_number}: empty filename")
            path = directory / filename
            image_id = (record.get("image_id") or "").strip() or path.stem
            entries.append(ImageEntry(image_id, path, (record.get("split") or "").strip() or None))
    return entries


def check_unique_ids(entries: Iterable[ImageEntry]) -> None:
    """Raise ManifestError naming every id that occurs more than once, with its files."""
    entries = list(entries)
    counts = Counter(entry.image_id for entry in entries)
    duplicates = sorted(image_id for image_id, count in counts.items() if count > 1)
    if duplicates:
        details = "; ".join(
            f"{image_id}: " + ", ".join(str(e.path) for e in entries if e.image_id == image_id)
            for image_id in duplicates[:10]
        )
        raise ManifestError(f"duplicate image id(s) {duplicates[:10]} ({details})")


def describe_file(path: Path) -> tuple[int, str, int | None, int | None]:
    """(bytes, sha256, width, height); width/height are None if the header is unreadable."""
    data = path.read_bytes()
    width = height = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
    except Exception:  # broken headers are extraction's job to report, not the manifest's
        LOGGER.debug("unreadable image header: %s", path)
    return len(data), hashlib.sha256(data).hexdigest(), width, height


def build_manifest(entries: list[ImageEntry], dataset: str, threads: int = 4) -> pa.Table:
    """Describe every entry and return a MANIFEST_SCHEMA table ordered by image_id.

    Raises:
        ManifestError: duplicate ids or a listed file that does not exist.
    """
    check_unique_ids(entries)
    missing = [str(entry.path) for entry in entries if not entry.path.is_file()]
    if missing:
        raise ManifestError(f"{len(missing)} listed file(s) do not exist, e.g. {missing[:5]}")
    entries = sorted(entries, key=lambda entry: entry.image_id)
    with ThreadPoolExecutor(threads) as pool:
        described = list(pool.map(describe_file, [entry.path for entry in entries]))
    return pa.table(
        {
            "dataset": [dataset] * len(entries),
            "image_id": [entry.image_id for entry in entries],
            "uri": [str(entry.path.resolve()) for entry in entries],
            "bytes": [size for size, _, _, _ in described],
            "width": [width for _, _, width, _ in described],
            "height": [height for _, _, _, height in described],
            "sha256": [digest for _, digest, _, _ in described],
            "split": [entry.split for entry in entries],
        },
        schema=MANIFEST_SCHEMA,
    )


def read_manifest(path: str, flag: str = "--manifest") -> pa.Table:
    """Read and validate a manifest Parquet file (local path or fsspec URL); errors name flag.

    Raises:
        ManifestError: the file is missing or not a valid manifest.
    """
    from features import files
    from schemas.tables import conform_manifest

    if not files.exists(path):
        raise ManifestError(f"{flag} {path}: no such file")
    try:
        table = files.read_parquet(path)
    except Exception as error:  # pyarrow raises ArrowInvalid/OSError for non-Parquet input
        raise ManifestError(f"{flag} {path}: not a Parquet file ({error})") from error
    return conform_manifest(table, source=path)
