"""Small file-system helpers over local paths and fsspec URLs, with atomic whole-file writes."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import uuid
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq


def join(base: str, *parts: str) -> str:
    """Join path components with '/', for local paths and URLs alike."""
    return "/".join([base.rstrip("/"), *[part.strip("/") for part in parts]])


def is_local(path: str) -> bool:
    """True for plain paths and file:// URLs."""
    return "://" not in path or path.startswith("file://")


def _local(path: str) -> str:
    return path[len("file://") :] if path.startswith("file://") else path


def native(path: str) -> str:
    """The form libraries with their own I/O want: a plain path for local files, else the URL."""
    return _local(path)


def filesystem(path: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for a path or URL."""
    return fsspec.core.url_to_fs(path)  # type: ignore[no-any-return]


def exists(path: str) -> bool:
    """Whether a file or directory exists."""
    if is_local(path):
        return os.path.exists(_local(path))
    fs, inner = filesystem(path)
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
    fs, inner = filesystem(path)
    if not fs.exists(inner):
        return []
    return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(inner, detail=False))


def read_bytes(path: str) -> bytes:
    """Whole-file read."""
    if is_local(path):
        with open(_local(path), "rb") as handle:
            return handle.read()
    fs, inner = filesystem(path)
    return bytes(fs.cat_file(inner))


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write a whole file so readers see either the old file or the new one, never a part.

    Local files go to a temp file in the same directory, are fsynced, then renamed over the
    target. Object stores (gs://, s3://, memory://) publish an object only when its upload
    completes, which gives the same guarantee.
    """
    if not is_local(path):
        fs, inner = filesystem(path)
        fs.pipe_file(inner, data)
        return
    target = _local(path)
    directory = os.path.dirname(target) or "."
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{os.path.basename(target)}.", suffix=f".{uuid.uuid4().hex[:8]}.tmp", dir=directory
    )
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def atomic_write_text(path: str, text: str) -> None:
    """atomic_write_bytes for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_parquet(path: str, table: pa.Table) -> None:
    """Serialise a table to Parquet in memory and publish it atomically."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    atomic_write_bytes(path, buffer.getvalue())


def read_parquet(path: str) -> pa.Table:
    """Read one Parquet file from a path or URL."""
    if is_local(path):
        return pq.read_table(_local(path))
    return pq.read_table(io.BytesIO(read_bytes(path)))


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
    fs, inner = filesystem(path)
    if fs.exists(inner):
        fs.rm_file(inner)
