"""Small file-system helpers over local paths and fsspec URLs, with atomic whole-file writes."""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from features import object_stores, retrying_filesystems

LOGGER = logging.getLogger(__name__)
# Sidecar lock of the compare-and-swap primitives; never deleted, so every writer locks one inode.
CAS_LOCK_NAME = ".cas.lock"


def join(base: str, *parts: str) -> str:
    """Join path components with '/', for local paths and URLs alike."""
    return "/".join([base.rstrip("/"), *[part.strip("/") for part in parts]])


def is_local(path: str) -> bool:
    """True for plain paths and file:// URLs."""
    return "://" not in path or path.startswith("file://")


def _local(path: str) -> str:
    return path[len("file://") :] if path.startswith("file://") else path


def native(path: str) -> str:
    """The form libraries with their own I/O want: a plain path for local files, else the URL
    (whose fsspec class is then the retrying one: Zarr opens it through fsspec)."""
    if not is_local(path):
        retrying_filesystems.install(_protocol(path))
    return _local(path)


def filesystem(path: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for a path or URL.

    On S3 and GCS the filesystem retries every request under features.retries' policy (and
    their libraries' own retry loops are off: features/retrying_filesystems.py).
    """
    if not is_local(path):
        retrying_filesystems.install(_protocol(path))
    return fsspec.core.url_to_fs(path)  # type: ignore[no-any-return]


def _uncached(path: str) -> tuple[Any, str]:
    """filesystem(path) with fsspec's cached listings of path and its parents dropped.

    s3fs and gcsfs cache directory listings for the life of the filesystem instance by default,
    but other processes (Beam workers, another run) write to the store: existence and listings
    must come from the server.
    """
    fs, inner = filesystem(path)
    fs.invalidate_cache(inner)
    return fs, inner


def exists(path: str) -> bool:
    """Whether a file or directory exists."""
    if is_local(path):
        return os.path.exists(_local(path))
    fs, inner = _uncached(path)
    return bool(fs.exists(inner))


def makedirs(path: str) -> None:
    """Create a directory and its parents (no-op on object stores without directories)."""
    if is_local(path):
        os.makedirs(_local(path), exist_ok=True)
    else:
        fs, inner = filesystem(path)
        fs.makedirs(inner, exist_ok=True)


def list_names(path: str) -> list[str]:
    """Sorted base names of the entries of a directory; empty if it does not exist."""
    if is_local(path):
        local = _local(path)
        return sorted(os.listdir(local)) if os.path.isdir(local) else []
    fs, inner = _uncached(path)
    try:  # no existence check first: on S3 that is a HEAD and a LIST more per listing
        entries = fs.ls(inner, detail=False)
    except FileNotFoundError:
        return []
    return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in entries)


def read_bytes(path: str) -> bytes:
    """Whole-file read."""
    if is_local(path):
        with open(_local(path), "rb") as handle:
            return handle.read()
    fs, inner = filesystem(path)
    read = object_stores.READ_BYTES.get(_protocol(path))  # one request where cat_file takes two
    return bytes(read(fs, inner) if read is not None else fs.cat_file(inner))


def atomic_write_bytes(path: str, data: bytes | memoryview | pa.Buffer) -> None:
    """Write a whole file so readers see either the old file or the new one, never a part.

    Local files go to a temp file in the same directory, are fsynced, then renamed over the
    target. Object stores (gs://, s3://, memory://) publish an object only when its upload
    completes, which gives the same guarantee. (Files written batch by batch:
    features.parquet_writes.)
    """
    if not is_local(path):
        fs, inner = filesystem(path)
        # Object-store clients sign and retry bytes; a buffer view is copied once here.
        fs.pipe_file(inner, data if isinstance(data, bytes) else bytes(data))
        return
    temporary = _write_temporary(_local(path), data)
    try:
        os.replace(temporary, _local(path))
    except BaseException:
        os.unlink(temporary)
        raise


def atomic_write_text(path: str, text: str) -> None:
    """atomic_write_bytes for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def parquet_bytes(table: pa.Table) -> bytes:
    """A table as the bytes of a zstd Parquet file (how the store writes its small tables)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def atomic_write_parquet(path: str, table: pa.Table) -> int:
    """Serialise a table to Parquet in memory and publish it atomically; returns its size."""
    data = parquet_bytes(table)
    atomic_write_bytes(path, data)
    return len(data)


def read_parquet(path: str, columns: list[str] | None = None) -> pa.Table:
    """Read one Parquet file (all columns, or the named ones) from a path or URL."""
    if is_local(path):
        return pq.read_table(_local(path), columns=columns)
    return pq.read_table(io.BytesIO(read_bytes(path)), columns=columns)


def read_parquet_as(path: str, flag: str, error: Callable[[str], Exception]) -> pa.Table:
    """read_parquet for a user's file: bytes that are not Parquet raise error(one line).

    Raises:
        Exception: error("FLAG PATH: not a Parquet file (...)"), instead of pyarrow's ArrowInvalid.
    """
    try:
        return read_parquet(path)
    except pa.ArrowInvalid as cause:
        raise error(f"{flag} {path}: not a Parquet file ({cause})") from None


def remove_tree(path: str) -> None:
    """Delete a directory tree if it exists."""
    if not exists(path):
        return
    if is_local(path):
        import shutil

        shutil.rmtree(_local(path))
    else:
        fs, inner = filesystem(path)
        fs.rm(inner, recursive=True)


def remove_file(path: str) -> None:
    """Delete one file if it exists."""
    if is_local(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_local(path))
        return
    fs, inner = _uncached(path)
    if fs.exists(inner):
        # A retried delete whose first answer was lost finds the object gone: that is success.
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(inner)


def _protocol(path: str) -> str:
    """fsspec protocol of a path ('file' for plain paths)."""
    if is_local(path):
        return "file"
    return path.split("://", 1)[0]


def create_temporary(target: str) -> tuple[int, str]:
    """Create an empty temp file next to target (making its folder); returns (fd, its path)."""
    directory = os.path.dirname(target) or "."
    attempt = 0
    while True:
        # A concurrent run's preflight removes the empty folders it created itself
        # (features.preflight): a folder made here may vanish before the temp file lands.
        try:
            os.makedirs(directory, exist_ok=True)
            return tempfile.mkstemp(
                prefix=f".{os.path.basename(target)}.",
                suffix=f".{uuid.uuid4().hex[:8]}.tmp",
                dir=directory,
            )
        except (FileNotFoundError, FileExistsError):
            attempt += 1
            if attempt == 3 or (os.path.exists(directory) and not os.path.isdir(directory)):
                raise


def _write_temporary(target: str, data: bytes | memoryview | pa.Buffer) -> str:
    """Write data completely (fsynced) to a new temp file next to target; returns its path."""
    handle, temporary = create_temporary(target)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
    except BaseException:
        os.unlink(temporary)
        raise
    return temporary


def _create_exclusive_local(path: str, data: bytes) -> bool:
    target = _local(path)
    temporary = _write_temporary(target, data)
    try:
        os.link(temporary, target)  # atomic; fails if target exists, and target is never partial
    except FileExistsError:
        return False
    finally:
        os.unlink(temporary)
    return True


@contextlib.contextmanager
def _cas_lock(target: str) -> Iterator[None]:
    """Exclusive flock on the directory's sidecar lock file (released when the fd closes)."""
    directory = os.path.dirname(target) or "."
    os.makedirs(directory, exist_ok=True)
    descriptor = os.open(os.path.join(directory, CAS_LOCK_NAME), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def _read_local_or_none(target: str) -> bytes | None:
    try:
        with open(target, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def _replace_if_unchanged_local(path: str, expected: bytes, data: bytes) -> bool:
    target = _local(path)
    with _cas_lock(target):
        if _read_local_or_none(target) != expected:
            return False
        temporary = _write_temporary(target, data)
        os.replace(temporary, target)
    return True


def _remove_if_unchanged_local(path: str, expected: bytes) -> bool:
    target = _local(path)
    with _cas_lock(target):
        if _read_local_or_none(target) != expected:
            return False
        os.unlink(target)
    return True


def _warn_not_exclusive(path: str, operation: str) -> None:
    LOGGER.warning(
        "%s: the %r filesystem cannot do %s atomically; two writers racing on this file "
        "may both succeed",
        path,
        _protocol(path),
        operation,
    )


def _create_exclusive_fallback(path: str, data: bytes) -> bool:
    _warn_not_exclusive(path, "exclusive creates")
    if exists(path):
        return False
    atomic_write_bytes(path, data)
    return read_bytes(path) == data


def _replace_if_unchanged_fallback(path: str, expected: bytes, data: bytes) -> bool:
    _warn_not_exclusive(path, "compare-and-swap")
    try:
        if read_bytes(path) != expected:
            return False
    except FileNotFoundError:
        return False
    atomic_write_bytes(path, data)
    return read_bytes(path) == data


def _remove_if_unchanged_fallback(path: str, expected: bytes) -> bool:
    _warn_not_exclusive(path, "compare-and-delete")
    try:
        if read_bytes(path) != expected:
            return False
    except FileNotFoundError:
        return False
    remove_file(path)
    return True


# Backends of the atomic primitives by fsspec protocol; others fall back loudly (see below).
_EXCLUSIVE_CREATE: dict[str, Callable[[str, bytes], bool]] = {"file": _create_exclusive_local}
_REPLACE_IF_UNCHANGED: dict[str, Callable[[str, bytes, bytes], bool]] = {
    "file": _replace_if_unchanged_local
}
_REMOVE_IF_UNCHANGED: dict[str, Callable[[str, bytes], bool]] = {"file": _remove_if_unchanged_local}


def _on_object_store(operation: Callable[..., bool]) -> Callable[..., bool]:
    """Adapt a features.object_stores function (filesystem, inner path, ...) to take a URL."""

    def call(path: str, *contents: bytes) -> bool:
        fs, inner = filesystem(path)
        return operation(fs, inner, *contents)

    return call


# S3 and GCS decide conditional writes on the server (features/object_stores.py).
for _registry, _operations in (
    (_EXCLUSIVE_CREATE, object_stores.CREATE_EXCLUSIVE),
    (_REPLACE_IF_UNCHANGED, object_stores.REPLACE_IF_UNCHANGED),
    (_REMOVE_IF_UNCHANGED, object_stores.REMOVE_IF_UNCHANGED),
):
    _registry.update({name: _on_object_store(op) for name, op in _operations.items()})


def create_exclusive(path: str, data: bytes) -> bool:
    """Create a file with exactly data, only if it does not exist yet.

    Locally the data goes to a complete temp file that is hard-linked to path, so of any
    number of racing callers exactly one wins and no reader ever sees a partial file. As for
    replace_if_unchanged, data must be unique to this writer on S3 and GCS. S3
    (If-None-Match: *) and GCS (ifGenerationMatch=0) decide it on the server. A
    filesystem without a registered backend falls back to exists-then-write (racy) and logs a
    WARNING saying so.

    Returns:
        True iff this call created the file with exactly data.
    """
    return _EXCLUSIVE_CREATE.get(_protocol(path), _create_exclusive_fallback)(path, data)


def replace_if_unchanged(path: str, expected: bytes | None, data: bytes) -> bool:
    """Compare-and-swap: replace the file with data only if it still holds exactly expected.

    expected=None means "the file must not exist" (create_exclusive), so one call publishes a
    pointer whether or not it exists yet. data must be unique to this writer (the store's
    payloads carry a writer token): on S3 and GCS a failed precondition is settled by reading
    the object back, and finding data there counts as this call's write. On S3 and GCS the server checks the version token
    (ETag, generation) read together with the compared bytes.

    Locally the read-compare-replace runs under an flock on a sidecar lock file in the same
    directory (never deleted), and the replacement is an atomic rename. Unregistered
    filesystems fall back to a racy read-compare-write with a WARNING.

    Returns:
        True iff this call replaced expected by data (False if the file changed or is gone).
    """
    if expected is None:
        return create_exclusive(path, data)
    replace = _REPLACE_IF_UNCHANGED.get(_protocol(path), _replace_if_unchanged_fallback)
    return replace(path, expected, data)


def remove_if_unchanged(path: str, expected: bytes) -> bool:
    """Compare-and-delete: remove the file only if it still holds exactly expected.

    Same locking as replace_if_unchanged, so a delete never removes a file that a concurrent
    compare-and-swap has just replaced.

    Returns:
        True iff this call removed the file.
    """
    remove = _REMOVE_IF_UNCHANGED.get(_protocol(path), _remove_if_unchanged_fallback)
    return remove(path, expected)
