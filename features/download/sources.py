"""Turn a dataset's official files and an image source into download items and raw label files."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from features import files
from features.download.archives import is_split_part, safe_extract, volume_parts
from features.download.fetch import FetchConfig, fetch, scheme_of
from features.download.items import DownloadItem
from features.download.manifest import scan_images
from features.download.secrets import redact_url
from features.labels.ava_text import drop_malformed
from features.labels.parsing import parse_ava_text, parse_split_list
from features.labels.scut import read_official_split
from schemas.errors import DownloadError

LOGGER = logging.getLogger(__name__)
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".7z")
RAW_DIR = "raw"


@dataclass(frozen=True)
class SourceRequest:
    """What the user asked for on the command line."""

    dest: Path
    source: str
    list_uri: str | None
    split_files: tuple[str, ...]
    sha256: str | None
    config: FetchConfig


def is_local(uri: str) -> bool:
    """Plain paths and file:// URLs."""
    return scheme_of(uri) in ("", "file")


def file_name(uri: str) -> str:
    """Last name of a path or of a URL's path (never its host, userinfo or query)."""
    return Path(uri.split("?")[0] if is_local(uri) else urlsplit(uri).path).name


def read_input(uri: str, config: FetchConfig, what: str) -> bytes:
    """Read a list or split file from a local path or an allowed URL (with retries).

    Raises:
        DownloadError: it cannot be read.
    """
    outcome = fetch(uri, config, allow_local=True)
    if outcome.data is None:
        raise DownloadError(f"{what} {redact_url(uri)}: {outcome.status} ({outcome.error})")
    return outcome.data


def save_raw(request: SourceRequest, name: str, data: bytes) -> Path:
    """Keep an official input under DEST/raw for the labels step."""
    path = request.dest / RAW_DIR / name
    files.atomic_write_bytes(str(path), data)
    return path


def _local_index(directory: Path) -> dict[str, Path]:
    return {path.stem: path for path in scan_images(directory)}


def image_locator(request: SourceRequest) -> Callable[[str], tuple[str, str] | None]:
    """image id -> (uri, filename), from a URL template, an fsspec prefix, a folder or archives.

    Raises:
        DownloadError: a local source that does not exist.
    """
    source = request.source
    if "{image_id}" in source:
        suffix = Path(source.split("?")[0]).suffix or ".jpg"
        return lambda image_id: (source.format(image_id=image_id), f"{image_id}{suffix}")
    parts = [part for part in source.split(",") if part]
    if all(
        part.lower().endswith(ARCHIVE_SUFFIXES) or is_split_part(part) for part in parts
    ) and all(map(is_local, parts)):
        index: dict[str, Path] = {}
        # The parts of a split 7z (AVA.7z.001, .002, ...) are one archive, extracted once.
        firsts = dict.fromkeys(volume_parts(Path(part))[0] for part in parts)
        for first in firsts:
            target = request.dest / RAW_DIR / "extracted" / first.name.split(".")[0]
            safe_extract(first, target)
            index.update(_local_index(target))
        return lambda image_id: (
            (str(index[image_id]), index[image_id].name) if image_id in index else None
        )
    if is_local(source):
        directory = Path(source[len("file://") :] if source.startswith("file://") else source)
        if not directory.is_dir():
            raise DownloadError(
                f"--source {redact_url(source)}: not a directory, archive or URL template"
            )
        local = _local_index(directory)
        return lambda image_id: (
            (str(local[image_id]), local[image_id].name) if image_id in local else None
        )
    prefix = source.rstrip("/")
    return lambda image_id: (f"{prefix}/{image_id}.jpg", f"{image_id}.jpg")


def _items(
    request: SourceRequest,
    ids: list[str],
    splits: dict[str, str],
    extra: dict[str, dict[str, str]] | None = None,
) -> list[DownloadItem]:
    locate = image_locator(request)
    items, missing = [], []
    for image_id in ids:
        found = locate(image_id)
        if found is None:
            missing.append(image_id)
            found = (f"{request.source.rstrip('/')}/{image_id}", f"{image_id}.jpg")
        details = (extra or {}).get(image_id, {})
        items.append(
            DownloadItem(
                image_id,
                details.get("uri") or found[0],
                found[1],
                sha256=details.get("sha256") or None,
                split=splits.get(image_id),
                allow_local=details.get("allow_local", "1") == "1",
            )
        )
    if missing:
        LOGGER.warning("%d id(s) not found in the local source, e.g. %s", len(missing), missing[:5])
    return items


def ava_items(request: SourceRequest) -> list[DownloadItem]:
    """AVA: ids from AVA.txt (--list), splits from the .jpgl files, images from --source.

    Raises:
        DownloadError: no --list given.
        LabelError: more than 1 % of the --list lines malformed (probably not an AVA.txt).
    """
    if not request.list_uri:
        raise DownloadError("--list: AVA needs the official AVA.txt")
    data = read_input(request.list_uri, request.config, "--list")
    save_raw(request, "AVA.txt", data)
    source = redact_url(request.list_uri)
    # Malformed lines are skipped with a warning naming file and line, and a file mostly
    # malformed fails before any fetch, as in pipelines.labels (same default share): such a
    # line can never become a label row (labels drops it), so fetching its image is wasted,
    # while failing a long download for a handful of lines would lose more than it protects.
    rows, _ = drop_malformed(
        parse_ava_text(data.decode("utf-8", errors="surrogateescape"), source), source, flag=None
    )
    ids = list(dict.fromkeys(rows["image_id"]))
    splits: dict[str, str] = {}
    for uri in request.split_files:
        data = read_input(uri, request.config, "--split-file")
        name = file_name(uri)
        save_raw(request, name, data)
        split = "test" if "test" in name else "train"
        splits.update(dict.fromkeys(parse_split_list(data.decode("utf-8")), split))
    return _items(request, ids, splits)


def folder_items(request: SourceRequest) -> list[DownloadItem]:
    """Folder: ids (and optional split, uri, sha256) from a CSV image_id,score[,split].

    Raises:
        DownloadError: no --list, or a CSV without image_id.
    """
    if not request.list_uri:
        raise DownloadError("--list: the folder dataset needs a CSV image_id,score[,split]")
    data = read_input(request.list_uri, request.config, "--list")
    save_raw(request, "labels.csv", data)
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
    if not rows or "image_id" not in rows[0]:
        raise DownloadError(f"--list {redact_url(request.list_uri)}: needs an image_id column")
    remote_list = not is_local(request.list_uri)
    extra = {
        row["image_id"]: {
            "uri": (row.get("uri") or "").strip(),
            "sha256": (row.get("sha256") or "").strip(),
            "allow_local": "0" if remote_list else "1",
        }
        for row in rows
    }
    splits = {row["image_id"]: row["split"] for row in rows if row.get("split")}
    return _items(request, list(extra), splits, extra)


def scut_items(request: SourceRequest) -> list[DownloadItem]:
    """SCUT-FBP5500: fetch the release zip (sha256 checked), extract it safely, list Images/.

    Raises:
        DownloadError: the zip cannot be fetched or its digest differs.
    """
    data = read_input(request.source, request.config, "--source")
    if request.sha256 and hashlib.sha256(data).hexdigest() != request.sha256.lower():
        raise DownloadError(f"--source {redact_url(request.source)}: sha256 differs from --sha256")
    archive = save_raw(request, file_name(request.source) or "scut.zip", data)
    release = request.dest / RAW_DIR / "scut"
    safe_extract(archive, release)
    images = scan_images(release)
    official = read_official_split(release)
    return [
        DownloadItem(path.stem, str(path), path.name, split=official.get(path.stem))
        for path in images
    ]


SOURCES: dict[str, Callable[[SourceRequest], list[DownloadItem]]] = {
    "ava": ava_items,
    "scut-fbp5500": scut_items,
    "folder": folder_items,
}
