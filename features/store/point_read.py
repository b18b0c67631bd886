"""Scattered rows of a sharded Zarr array with byte-range reads: a shard's index, then its chunks.

Point lookups touch one row here and there; reading whole shard objects (what scans and the
training input do) would cost a shard per row. Here each touched shard costs one read of its
index and one read per inner chunk holding requested rows, locally (pread) or on an object
store (ranged GETs).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from features import files
from features.store import shard_reader
from features.store.row_scatter import key_runs
from features.store.shard_reader import (
    MISSING,
    ShardFormat,
    decode_chunk,
    decode_items,
    decode_pool,
    decode_threads,
    parse_index,
)

_PARALLEL_ABOVE = 8  # shards touched before reading them in the decode pool
# Shards read at once on an object store: each read waits on round trips, not on a core
# (with one thread per core, 1k ids cost 4.7x tensorstore's time on moto S3:
# benchmarks.reader_choice).
_REMOTE_READS = 32
_REMOTE_POOL: tuple[int, ThreadPoolExecutor] | None = None  # (owner pid, pool)
# A local shard object up to this size is read whole, one read instead of index + chunk.
_WHOLE_READ_BYTES = 256 * 1024
# (offset from the start, or negative from the end; size) -> the bytes
RangeReader = Callable[[int, int], bytes | memoryview]


def _sliced(whole: memoryview) -> RangeReader:
    """A RangeReader over an object already read whole."""

    def sliced(offset: int, nbytes: int) -> memoryview:
        start = offset if offset >= 0 else max(0, len(whole) + offset)
        return whole[start : start + nbytes]

    return sliced


def _local_reader(path: str) -> tuple[RangeReader, Callable[[], None]] | None:
    try:
        descriptor = os.open(files.native(path), os.O_RDONLY)
    except FileNotFoundError:
        return None
    size = os.fstat(descriptor).st_size
    if size <= _WHOLE_READ_BYTES:
        try:
            whole = memoryview(os.pread(descriptor, size, 0))
        finally:
            os.close(descriptor)
        return _sliced(whole), lambda: None

    def read(offset: int, nbytes: int) -> bytes:
        return os.pread(descriptor, nbytes, offset if offset >= 0 else size + offset)

    return read, lambda: os.close(descriptor)


def _remote_reader(path: str, whole: bool) -> tuple[RangeReader, Callable[[], None]] | None:
    """Ranged GETs; or, when the rows need at least half of the shard's chunks, one GET of the
    whole object (1k ids in 32 shards: 162 GETs on S3 where tensorstore made 33)."""
    if whole:
        data = shard_reader.read_object(path)
        return None if data is None else (_sliced(memoryview(data)), lambda: None)
    fs, inner = files.filesystem(path)

    def read(offset: int, nbytes: int) -> bytes:
        end = offset + nbytes if offset >= 0 else None  # a suffix range: the shard index
        return bytes(fs.cat_file(inner, start=offset, end=end))

    return read, lambda: None  # no HEAD request: the first ranged GET finds a missing object


def read_sparse_rows(array_path: str, fmt: ShardFormat, rows: np.ndarray) -> np.ndarray:
    """Rows (sorted, unique) of the array as [len(rows), *shape[1:]]; missing ones are fill.

    Raises:
        StoreError: a corrupt shard index or chunk (the message names the object).
    """
    out = np.empty((len(rows), *fmt.shape[1:]), fmt.dtype)
    tasks = [(shard, picked) for shard, picked in key_runs(rows // fmt.shard_rows)]
    local = files.is_local(array_path)
    if len(tasks) < (_PARALLEL_ABOVE if local else 2):
        for shard, picked in tasks:
            _read_shard_rows(array_path, fmt, shard, rows[picked], out[picked])
        return out
    # Reads and Blosc release the GIL: shards in parallel (each writes its own slice of out),
    # one batch of shards per thread (a future per shard costs more than a small shard's read).
    threads, pool = (decode_threads(), decode_pool()) if local else (_REMOTE_READS, _remote_pool())
    batches = np.array_split(np.arange(len(tasks)), min(len(tasks), threads))
    futures = [
        pool.submit(_read_batch, array_path, fmt, [tasks[i] for i in batch], rows, out)
        for batch in batches
    ]
    for future in futures:
        future.result()
    return out


def _remote_pool() -> ThreadPoolExecutor:
    """The process's pool of object-store shard reads (_REMOTE_READS threads)."""
    global _REMOTE_POOL
    if _REMOTE_POOL is None or _REMOTE_POOL[0] != os.getpid():
        _REMOTE_POOL = (os.getpid(), ThreadPoolExecutor(_REMOTE_READS, "shard-remote-read"))
    return _REMOTE_POOL[1]


def _read_batch(
    array_path: str,
    fmt: ShardFormat,
    tasks: list[tuple[int, slice]],
    rows: np.ndarray,
    out: np.ndarray,
) -> None:
    for shard, picked in tasks:
        _read_shard_rows(array_path, fmt, shard, rows[picked], out[picked])


def _decode_rows(
    source: bytes | memoryview, within: np.ndarray, out: np.ndarray, fmt: ShardFormat, where: str
) -> bool:
    """Rows `within` (sorted) of a Blosc chunk straight into out, decoding only the Blosc
    blocks that hold them, when they are at most a quarter of the chunk's rows (a decode of
    1k spread ids was 1k whole chunks: benchmarks.store_scale). False: decode it whole."""
    if not fmt.blosc or 4 * len(within) > fmt.chunk_rows:
        return False
    row_items = out[0].size
    for _, run in key_runs(within - np.arange(len(within))):  # runs of consecutive rows
        first = int(within[run.start]) * row_items
        if not decode_items(source, out[run].reshape(-1), first, fmt.chunk_nbytes, where):
            return False
    return True


def _read_shard_rows(
    array_path: str, fmt: ShardFormat, shard: int, rows: np.ndarray, out: np.ndarray
) -> None:
    where = files.join(array_path, fmt.shard_key(shard))
    local = rows - shard * fmt.shard_rows
    if files.is_local(where):
        opened = _local_reader(where)
    else:
        chunks_needed = len(np.unique(local // fmt.chunk_rows))
        opened = _remote_reader(where, 2 * chunks_needed >= max(2, fmt.chunks_per_shard))
    if opened is None:
        out[:] = fmt.fill_value
        return
    read, close = opened
    try:
        try:
            raw = read(-fmt.index_nbytes if fmt.index_at_end else 0, fmt.index_nbytes)
        except FileNotFoundError:
            out[:] = fmt.fill_value
            return
        index = parse_index(memoryview(raw), fmt, where)
        chunk = np.empty((fmt.chunk_rows, *fmt.shape[1:]), fmt.dtype)
        chunks = [(int(local[0]) // fmt.chunk_rows, slice(0, 1))] if len(local) == 1 else None
        for number, picked in chunks or key_runs(local // fmt.chunk_rows):
            offset, nbytes = (int(value) for value in index[number])
            if offset == MISSING:
                out[picked] = fmt.fill_value
                continue
            source = read(offset, nbytes)
            within = local[picked] - number * fmt.chunk_rows
            if _decode_rows(source, within, out[picked], fmt, where):
                continue
            decode_chunk(memoryview(source), chunk, fmt.blosc, where)
            out[picked] = chunk[within]
    finally:
        close()
