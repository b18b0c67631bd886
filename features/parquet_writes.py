"""Parquet files written batch by batch and published whole, at local paths and fsspec URLs."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from features import files


@contextlib.contextmanager
def atomic_parquet_writer(path: str, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
    """A zstd ParquetWriter (as files.parquet_bytes) whose file appears at path only when the
    block completes, so a reader sees the old file or the whole new one, never a part.

    Local targets are written to a temp file in the same folder, fsynced and renamed over path.
    URLs are written to a local temp file first and uploaded when complete: object stores
    publish an object only once its upload finishes, and the batches never sit in memory.

    Args:
        path: local path or fsspec URL of the file to publish.
        schema: the schema of every batch written.

    Returns:
        A context manager yielding the writer.

    Raises:
        Exception: whatever the block, the write or the upload raises; the temp file is removed
        and path is left as it was.
    """
    local = files.is_local(path)
    if local:
        handle, temporary = files.create_temporary(files.native(path))
    else:
        handle, temporary = tempfile.mkstemp(prefix=".parquet-upload.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            with pq.ParquetWriter(stream, schema, compression="zstd") as writer:
                yield writer
            stream.flush()
            os.fsync(stream.fileno())
        if local:
            os.replace(temporary, files.native(path))
        else:
            fs, inner = files.filesystem(path)
            fs.put_file(temporary, inner)
    finally:
        # After a rename there is nothing left to remove; after a failure, the partial file.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def atomic_write_parquet_batches(
    path: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch]
) -> None:
    """Publish batches (one row group each) as one Parquet file at path, never whole in memory:
    see atomic_parquet_writer; nothing is published if a batch or the write fails.

    Raises:
        Exception: whatever producing a batch, the write or the upload raises.
    """
    with atomic_parquet_writer(path, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
