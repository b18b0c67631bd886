"""Copy chosen rows (and one variant of each) of a row-sharded Zarr array into chosen output slots.

This is the read primitive of the training input: a shuffled window of samples is filled in
place, each sample read straight into the slot its batch will hand to TensorFlow, so that a
sample's bytes cross memory once. Compressed inner chunks are decoded into a small scratch
buffer that stays in cache, then copied to their slots; uncompressed ones on local disks are
read with positioned reads directly into the slots (no intermediate copy at all).
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from features import files
from features.store.shard_reader import (
    MISSING,
    ShardFormat,
    ShardScanner,
    decode_chunk,
    parse_index,
    read_object,
)
from schemas.errors import StoreError

# os.preadv takes at most IOV_MAX buffers per call (1024 on Linux).
_MAX_BUFFERS = 1024


@dataclass(frozen=True)
class ScatterRequest:
    """Rows to copy and where: out[slots[i]] = array[rows[i], variants[i]].

    Attributes:
        rows: [n] array rows, ascending.
        variants: [n] variant index per row, or None to copy every variant.
        slots: [n] destination indices along out's first axis.
    """

    rows: np.ndarray
    variants: np.ndarray | None
    slots: np.ndarray

    def subset(self, picked: slice | np.ndarray) -> ScatterRequest:
        """The request restricted to some of its entries."""
        variants = None if self.variants is None else self.variants[picked]
        return ScatterRequest(self.rows[picked], variants, self.slots[picked])


def scatter_from_values(values: np.ndarray, request: ScatterRequest, out: np.ndarray) -> None:
    """Place already-read rows ([n, variants, *shape], in request order) into out."""
    if request.variants is None:
        out[request.slots] = values
    else:
        out[request.slots] = values[np.arange(len(values)), request.variants]


def key_runs(keys: np.ndarray) -> Iterator[tuple[int, slice]]:
    """(key, slice) per run of equal adjacent keys (e.g. the shard or block of each row)."""
    if len(keys) == 0:
        return
    breaks = [0, *(np.flatnonzero(np.diff(keys)) + 1).tolist(), len(keys)]
    for start, stop in itertools.pairwise(breaks):
        yield int(keys[start]), slice(start, stop)


class RowScatter:
    """Scatter reads from one Zarr v3 array of the layout features.store.shard_reader handles."""

    def __init__(self, array_path: str, fmt: ShardFormat) -> None:
        self.path = array_path
        self.format = fmt
        self.row_items = int(np.prod(fmt.shape[1:]))
        self.variant_items = int(np.prod(fmt.shape[2:]))
        self.whole_row_chunks = fmt.chunk_rows == 1

    @classmethod
    def open(cls, array_path: str) -> RowScatter | None:
        """A scatter reader for the array, or None if its format is not handled here."""
        scanner = ShardScanner.open(array_path)
        return None if scanner is None else cls(array_path, scanner.format)

    def scatter(
        self, request: ScatterRequest, out: np.ndarray, pool: Executor | None = None
    ) -> None:
        """Copy the requested rows into out (C-contiguous; one slot is one row or one variant).

        Args:
            request: rows, variants and slots.
            out: the output array.
            pool: read shards concurrently in this pool (default: one after the other).

        Raises:
            StoreError: a row outside the array, or a corrupt shard object.
        """
        fmt = self.format
        if len(request.rows) and not 0 <= request.rows[0] <= request.rows[-1] < fmt.shape[0]:
            raise StoreError(f"{self.path}: rows outside the array's {fmt.shape[0]} rows")
        pieces = [
            (shard, request.subset(picked))
            for shard, picked in key_runs(request.rows // fmt.shard_rows)
        ]
        if pool is None or len(pieces) < 2:
            for shard, piece in pieces:
                self._scatter_shard(shard, piece, out)
            return
        futures = [pool.submit(self._scatter_shard, shard, piece, out) for shard, piece in pieces]
        for future in futures:
            future.result()

    def _scatter_shard(self, shard: int, request: ScatterRequest, out: np.ndarray) -> None:
        where = files.join(self.path, self.format.shard_key(shard))
        local = files.is_local(where)
        if not self.format.blosc and local:
            self._read_uncompressed(where, shard, request, out)
            return
        data = _read_local_object(where) if local else read_object(where)
        if data is None:
            out[request.slots] = self.format.fill_value
            return
        view = memoryview(data)
        index = parse_index(view, self.format, where)
        scratch = _thread_buffer("scratch", self.format.chunk_nbytes).view(self.format.dtype)
        scratch = scratch.reshape(self.format.chunk_rows, *self.format.shape[1:])
        first_row = shard * self.format.shard_rows
        for chunk, picked in key_runs((request.rows - first_row) // self.format.chunk_rows):
            part = request.subset(picked)
            offset, nbytes = (int(value) for value in index[chunk])
            if offset == MISSING:
                out[part.slots] = self.format.fill_value
                continue
            if offset + nbytes > len(view):
                raise StoreError(f"{where}: chunk {chunk} lies outside the object")
            source = view[offset : offset + nbytes]
            if self.whole_row_chunks and (part.variants is None or self.format.shape[1] == 1):
                # One-row chunks (wide views) decode straight into their slot: no copy.
                decode_chunk(source, out[int(part.slots[0])], self.format.blosc, where)
                continue
            decode_chunk(source, scratch, self.format.blosc, where)
            _place(scratch, part, first_row + chunk * self.format.chunk_rows, out)

    def _read_uncompressed(
        self, where: str, shard: int, request: ScatterRequest, out: np.ndarray
    ) -> None:
        """Positioned reads of each requested row (or variant) straight into its slot."""
        fmt = self.format
        try:
            descriptor = os.open(files.native(where), os.O_RDONLY)
        except FileNotFoundError:
            out[request.slots] = fmt.fill_value
            return
        try:
            size = os.fstat(descriptor).st_size
            if size < fmt.index_nbytes:
                raise StoreError(f"{where}: shard object of {size} bytes has no complete index")
            at = size - fmt.index_nbytes if fmt.index_at_end else 0
            index = parse_index(memoryview(os.pread(descriptor, fmt.index_nbytes, at)), fmt, where)
            ranges = self._file_ranges(where, shard, index, size, request, out)
            _read_ranges(descriptor, ranges, where)
        finally:
            os.close(descriptor)

    def _file_ranges(
        self,
        where: str,
        shard: int,
        index: np.ndarray,
        size: int,
        request: ScatterRequest,
        out: np.ndarray,
    ) -> list[tuple[int, Any]]:
        """(file offset, destination buffer) per requested row or variant; fills missing chunks."""
        fmt = self.format
        item = fmt.dtype.itemsize
        row_bytes, variant_bytes = self.row_items * item, self.variant_items * item
        ranges: list[tuple[int, Any]] = []
        local_rows = request.rows - shard * fmt.shard_rows
        for position, local in enumerate(local_rows.tolist()):
            chunk, within = divmod(local, fmt.chunk_rows)
            offset, nbytes = (int(value) for value in index[chunk])
            slot = int(request.slots[position])
            if offset == MISSING:
                out[slot] = fmt.fill_value
                continue
            if nbytes != fmt.chunk_nbytes or offset + nbytes > size:
                raise StoreError(f"{where}: chunk {chunk} is not {fmt.chunk_nbytes} raw bytes")
            start = offset + within * row_bytes
            if request.variants is not None:
                start += int(request.variants[position]) * variant_bytes
            ranges.append((start, memoryview(out[slot]).cast("B")))
        return ranges


def _place(scratch: np.ndarray, request: ScatterRequest, first_row: int, out: np.ndarray) -> None:
    """Copy rows of a decoded chunk (first_row is its first array row) to their slots.

    Each sample is copied once, from the cache-resident scratch chunk to its slot: a run of
    rows with one variant is a single numpy copy from a view, anything else goes row by row
    (a fancy index on the scratch side would first gather into a temporary array).
    """
    local = request.rows - first_row
    variants = request.variants
    if len(local) and local[-1] - local[0] + 1 == len(local):  # a run of rows: one copy call
        rows = slice(int(local[0]), int(local[-1]) + 1)
        if variants is None:
            out[request.slots] = scratch[rows]
            return
        if not np.any(variants != variants[0]):
            out[request.slots] = scratch[rows, int(variants[0])]
            return
    locals_, slots = local.tolist(), request.slots.tolist()
    if variants is None:
        for row, slot in zip(locals_, slots, strict=True):
            out[slot] = scratch[row]
        return
    for row, variant, slot in zip(locals_, variants.tolist(), slots, strict=True):
        out[slot] = scratch[row, variant]


_THREAD_BUFFERS = threading.local()


def _thread_buffer(name: str, nbytes: int) -> np.ndarray:
    """A uint8 buffer of nbytes owned by the calling thread, reused by its later calls.

    Shard objects and scratch chunks are MBs, read and decoded over and over: fresh
    allocations of that size are mapped anew and fault on every page (measured at 15 % of
    the training input's time), so each read thread keeps its own.
    """
    buffer = getattr(_THREAD_BUFFERS, name, None)
    if buffer is None or buffer.nbytes < nbytes:
        # Grown with headroom: shard objects differ in size by a few bytes.
        buffer = np.empty(nbytes + nbytes // 4, dtype=np.uint8)
        setattr(_THREAD_BUFFERS, name, buffer)
    return buffer[:nbytes]


def _read_local_object(path: str) -> memoryview | None:
    """A local object's bytes, in the calling thread's read buffer; None if it is missing."""
    try:
        descriptor = os.open(files.native(path), os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(descriptor).st_size
        buffer = _thread_buffer("object", size).data
        if os.preadv(descriptor, [buffer], 0) != size:
            raise StoreError(f"{path}: short read of a {size}-byte object")
        return buffer
    finally:
        os.close(descriptor)


def _read_ranges(descriptor: int, ranges: list[tuple[int, Any]], where: str) -> None:
    """Read each (offset, buffer); ranges that follow each other in the file share one preadv."""
    ranges.sort(key=lambda pair: pair[0])
    position = 0
    while position < len(ranges):
        start = ranges[position][0]
        buffers = [ranges[position][1]]
        end = start + buffers[0].nbytes
        position += 1
        while position < len(ranges) and ranges[position][0] == end and len(buffers) < _MAX_BUFFERS:
            buffers.append(ranges[position][1])
            end += buffers[-1].nbytes
            position += 1
        if os.preadv(descriptor, buffers, start) != end - start:
            raise StoreError(f"{where}: short read at byte {start}")
