"""Safe zip/tar/7z extraction: no zip slip, links or devices, bounded size and ratio, atomic move."""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, cast

from schemas.errors import ArchiveError

LOGGER = logging.getLogger(__name__)
COPY_CHUNK = 1 << 20
SEVEN_ZIP_MAGIC = b"7z\xbc\xaf\x27\x1c"
_VOLUME = re.compile(r"^(?P<base>.+\.7z)\.(?P<number>\d{3,})$", re.IGNORECASE)


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


def is_split_part(name: str) -> bool:
    """True for a part of a split 7z archive, e.g. AVA.7z.001."""
    return _VOLUME.match(Path(name).name) is not None


def volume_parts(archive: Path) -> list[Path]:
    """All parts of a split 7z archive (X.7z.001, .002, ...) from any one of them, in order.

    Raises:
        ArchiveError: a part missing before the last one present.
    """
    match = _VOLUME.match(archive.name)
    if match is None:
        return [archive]
    width = len(match.group("number"))
    pattern = re.compile(re.escape(match.group("base")) + rf"\.(\d{{{width}}})$", re.IGNORECASE)
    numbers = sorted(
        int(found.group(1))
        for path in archive.parent.iterdir()
        if (found := pattern.match(path.name))
    )
    expected = list(range(1, (numbers[-1] if numbers else 0) + 1))
    missing = sorted(set(expected) - set(numbers))
    if missing or not numbers:
        names = ", ".join(f"{match.group('base')}.{n:0{width}d}" for n in missing or [1])
        raise ArchiveError(f"{archive}: split 7z archive is missing part(s) {names}")
    return [archive.parent / f"{match.group('base')}.{n:0{width}d}" for n in expected]


class ConcatenatedParts(io.RawIOBase):
    """The parts of a split archive read as one seekable stream (what 7-Zip's split does)."""

    def __init__(self, parts: list[Path]) -> None:
        super().__init__()
        self._handles = [open(part, "rb") for part in parts]  # noqa: SIM115 (closed in close())
        self._starts = [0]
        for part in parts:
            self._starts.append(self._starts[-1] + part.stat().st_size)
        self._position = 0
        self.name = str(parts[0])

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._starts[-1]}
        self._position = max(0, base[whence] + offset)
        return self._position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view) and self._position < self._starts[-1]:
            part = max(i for i, start in enumerate(self._starts[:-1]) if start <= self._position)
            handle = self._handles[part]
            handle.seek(self._position - self._starts[part])
            wanted = min(len(view) - filled, self._starts[part + 1] - self._position)
            count = handle.readinto(view[filled : filled + wanted])
            if not count:
                break
            filled += count
            self._position += count
        return filled

    def close(self) -> None:
        for handle in self._handles:
            handle.close()
        super().close()


def is_seven_zip(archive: Path) -> bool:
    """True for a 7z archive or the first part of a split one (by its signature)."""
    with open(archive, "rb") as handle:
        return handle.read(len(SEVEN_ZIP_MAGIC)) == SEVEN_ZIP_MAGIC


def _seven_zip_members(archive: Path, handle: Any) -> list[Member]:
    members = []
    for info in handle.files:
        name = safe_name(info.filename, archive)
        if info.is_symlink or info.is_junction:
            raise ArchiveError(f"{archive}: member {info.filename!r} is a link")
        if info.is_socket or info.st_fmt not in (None, stat.S_IFREG, stat.S_IFDIR):
            raise ArchiveError(f"{archive}: member {info.filename!r} is not a regular file")
        if not info.is_directory:
            members.append(Member(name, int(info.uncompressed or 0), None, _no_open))
    return members


def _no_open() -> IO[bytes]:
    raise ArchiveError("7z members are written by the streaming writer")


class _StagingWriter:
    """py7zr writer of one member: streams into the staging folder, counting real bytes."""

    def __init__(self, target: Path, counter: list[int], limits: ArchiveLimits) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        self._sink = open(target, "xb")  # noqa: SIM115 (closed by py7zr's close() call)
        self._counter, self._limits, self._size = counter, limits, 0

    def write(self, data: bytes | bytearray) -> int:
        self._counter[0] += len(data)
        if self._counter[0] > self._limits.max_total_bytes:  # headers can lie
            raise ArchiveError(f"extracted bytes exceed the cap {self._limits.max_total_bytes}")
        self._size += len(data)
        return self._sink.write(data)

    def read(self, size: int | None = None) -> bytes:
        return b""

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._sink.seek(offset, whence)

    def flush(self) -> None:
        self._sink.flush()

    def size(self) -> int:
        return self._size

    def close(self) -> None:
        self._sink.close()


def _extract_seven_zip(archive: Path, limits: ArchiveLimits, staging: Path) -> int:
    import py7zr
    from py7zr.io import WriterFactory

    counter = [0]
    writers: list[_StagingWriter] = []

    class Factory(WriterFactory):  # type: ignore[misc]
        def create(self, filename: str) -> Any:
            relative = Path(filename).resolve().relative_to(staging.resolve())
            writer = _StagingWriter(
                staging / safe_name(relative.as_posix(), archive), counter, limits
            )
            writers.append(writer)
            return writer

    parts = volume_parts(archive)
    try:
        with (
            ConcatenatedParts(parts) as stream,
            py7zr.SevenZipFile(cast(IO[bytes], stream), mode="r") as handle,
        ):
            members = _seven_zip_members(archive, handle)
            _check(members, archive, limits, sum(part.stat().st_size for part in parts))
            try:
                handle.extractall(path=staging, factory=Factory())
            finally:
                for writer in writers:
                    writer.close()
    except ArchiveError:
        raise
    except Exception as error:  # py7zr, lzma, zlib, bz2 ... each raise their own types
        raise ArchiveError(
            f"{archive}: unreadable archive ({type(error).__name__}: {error})"
        ) from error
    return counter[0]


def _check(
    members: list[Member], archive: Path, limits: ArchiveLimits, archive_bytes: int | None = None
) -> None:
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
    tar_ratio = total / max(archive_bytes or archive.stat().st_size, 1)
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
    if _VOLUME.match(archive.name) or is_seven_zip(archive):
        return _extract_seven_zip(archive, limits, staging)
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
    raise ArchiveError(f"{archive}: not a zip, tar or 7z archive")


def safe_extract(archive: Path, destination: Path, limits: ArchiveLimits | None = None) -> int:
    """Extract an archive into `destination`, all-or-nothing.

    Every member is checked before anything is written; files go to a temp directory next to
    the destination, which is then renamed into place (an existing destination is replaced).

    Args:
        archive: a zip, tar (optionally compressed) or 7z file, or any part of a split 7z
            archive (X.7z.001, ...: all parts are read in order).
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
        except ArchiveError:
            raise
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
