"""Safe zip/tar extraction: no zip slip, links or devices, bounded size and ratio, atomic move."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from schemas.errors import ArchiveError

LOGGER = logging.getLogger(__name__)
COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class ArchiveLimits:
    """Zip-bomb guards: total bytes written and per-member compression ratio."""

    max_total_bytes: int = 20 * 1024**3
    max_ratio: float = 200.0
    max_members: int = 1_000_000


@dataclass(frozen=True)
class Member:
    """One regular file to extract: its safe relative name, sizes and a way to open it."""

    name: str
    size: int
    compressed: int | None
    open: Callable[[], IO[bytes]]


def safe_name(name: str, archive: Path) -> str:
    """Validated relative POSIX path of a member.

    Raises:
        ArchiveError: absolute paths, drive letters, '..' components or empty names.
    """
    text = name.replace("\\", "/")
    path = PurePosixPath(text)
    if text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        raise ArchiveError(f"{archive}: member {name!r} has an absolute path")
    if any(part == ".." for part in path.parts):
        raise ArchiveError(f"{archive}: member {name!r} escapes the destination ('..')")
    clean = "/".join(part for part in path.parts if part not in ("", "."))
    if not clean:
        raise ArchiveError(f"{archive}: member with an empty name")
    return clean


def _zip_members(archive: Path, handle: zipfile.ZipFile) -> Iterator[Member]:
    for info in handle.infolist():
        mode = info.external_attr >> 16
        name = safe_name(info.filename, archive)
        if stat.S_ISLNK(mode):
            raise ArchiveError(f"{archive}: member {info.filename!r} is a symbolic link")
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise ArchiveError(f"{archive}: member {info.filename!r} is not a regular file")
        if info.is_dir():
            continue
        yield Member(name, info.file_size, info.compress_size, lambda info=info: handle.open(info))  # type: ignore[misc]


def _tar_members(archive: Path, handle: tarfile.TarFile) -> Iterator[Member]:
    for info in handle.getmembers():
        name = safe_name(info.name, archive)
        if info.issym() or info.islnk():
            raise ArchiveError(f"{archive}: member {info.name!r} is a link")
        if info.isdir():
            continue
        if not info.isfile():
            raise ArchiveError(f"{archive}: member {info.name!r} is a device or special file")
        yield Member(name, info.size, None, lambda info=info: _extracted(handle, info))  # type: ignore[misc]


def _extracted(handle: tarfile.TarFile, info: tarfile.TarInfo) -> IO[bytes]:
    stream = handle.extractfile(info)
    if stream is None:
        raise ArchiveError(f"member {info.name!r} has no content")
    return stream


def _check(members: list[Member], archive: Path, limits: ArchiveLimits) -> None:
    if len(members) > limits.max_members:
        raise ArchiveError(f"{archive}: {len(members)} members exceed {limits.max_members}")
    total = sum(member.size for member in members)
    if total > limits.max_total_bytes:
        raise ArchiveError(
            f"{archive}: {total} uncompressed bytes exceed the cap {limits.max_total_bytes}"
        )
    for member in members:
        if member.compressed is not None and member.size > limits.max_ratio * max(
            member.compressed, 1
        ):
            raise ArchiveError(
                f"{archive}: member {member.name!r} compression ratio exceeds {limits.max_ratio:g}"
            )
    tar_ratio = total / max(archive.stat().st_size, 1)
    if members and members[0].compressed is None and tar_ratio > limits.max_ratio:
        raise ArchiveError(
            f"{archive}: compression ratio {tar_ratio:.0f} exceeds {limits.max_ratio:g}"
        )


def _write_members(members: list[Member], staging: Path, limits: ArchiveLimits) -> int:
    written = 0
    for member in members:
        target = staging / member.name
        target.parent.mkdir(parents=True, exist_ok=True)
        with member.open() as source, open(target, "xb") as sink:
            while chunk := source.read(COPY_CHUNK):
                written += len(chunk)
                if written > limits.max_total_bytes:  # headers can lie; count real bytes
                    raise ArchiveError(f"extracted bytes exceed the cap {limits.max_total_bytes}")
                sink.write(chunk)
    return written


def _open_members(archive: Path, limits: ArchiveLimits, staging: Path) -> int:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as handle:
            members = list(_zip_members(archive, handle))
            _check(members, archive, limits)
            return _write_members(members, staging, limits)
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as handle:
            members = list(_tar_members(archive, handle))
            _check(members, archive, limits)
            return _write_members(members, staging, limits)
    raise ArchiveError(f"{archive}: not a zip or tar archive")


def safe_extract(archive: Path, destination: Path, limits: ArchiveLimits | None = None) -> int:
    """Extract an archive into `destination`, all-or-nothing.

    Every member is checked before anything is written; files go to a temp directory next to
    the destination, which is then renamed into place (an existing destination is replaced).

    Args:
        archive: a zip or tar (optionally compressed) file.
        destination: the folder to create.
        limits: size and ratio caps.

    Returns:
        Bytes extracted.

    Raises:
        ArchiveError: an unsafe member, a bomb, or an unreadable archive.
    """
    limits = limits or ArchiveLimits()
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        try:
            written = _open_members(archive, limits, staging)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as error:
            raise ArchiveError(f"{archive}: unreadable archive ({error})") from error
        if destination.exists():
            shutil.rmtree(destination)
        os.replace(staging, destination)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    LOGGER.info("extracted %s (%d bytes) into %s", archive, written, destination)
    return written
