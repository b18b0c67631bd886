"""Fast row-range scans of a Zarr v3 sharded features array.

zarr-python decodes a shard inner chunk by inner chunk through its async codec pipeline, which
costs far more than the decompression itself on scans. Here a shard object is fetched with one
get and its inner chunks are decompressed straight into the output array, in a thread pool
(Blosc releases the GIL). The on-disk format is unchanged: a standard Zarr v3 array.

Only the layout this store writes is handled: shards and inner chunks that are blocks of rows
spanning every other axis, inner codecs `bytes` (little endian) plus an optional `blosc`, and
an index of (offset, nbytes) uint64 pairs at either end with an optional crc32c.
`ShardFormat.parse` returns None for anything else, and callers read through zarr-python.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from features import files
from schemas.errors import StoreError

MISSING = 2**64 - 1  # (offset, nbytes) of an inner chunk that was never written
_BLOSC_HEADER = 16
_POOL: tuple[int, ThreadPoolExecutor] | None = None  # (owner pid, pool): forks get a new one


def decode_threads() -> int:
    """Threads decoding inner chunks (one per core, at most 8)."""
    return max(1, min(8, os.cpu_count() or 1))


def decode_pool() -> ThreadPoolExecutor:
    """The process's shard decoding thread pool (decode_threads() threads)."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), ThreadPoolExecutor(decode_threads(), "shard-decode"))
    return _POOL[1]


def _fill_value(raw: Any, dtype: np.dtype[Any]) -> Any | None:
    """Zarr v3 fill_value JSON as a scalar of dtype; None when not understood."""
    special = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}
    if isinstance(raw, str):
        return dtype.type(special[raw]) if raw in special and dtype.kind == "f" else None
    if isinstance(raw, bool | int | float):
        return dtype.type(raw)
    return None


def _named(codec: Any) -> tuple[str, Mapping[str, Any]]:
    if not isinstance(codec, Mapping):
        return "", {}
    return str(codec.get("name", "")), codec.get("configuration") or {}


def _little_endian_bytes(codec: Any, itemsize: int) -> bool:
    name, config = _named(codec)
    return name == "bytes" and (itemsize == 1 or config.get("endian") == "little")


@dataclass(frozen=True)
class ShardFormat:
    """What is needed to locate and decode a shard object of a row-sharded array.

    Attributes:
        shape: array shape; axis 0 is the row axis.
        dtype: element dtype.
        fill_value: value of rows in missing shards or inner chunks.
        shard_rows: rows per shard object.
        chunk_rows: rows per inner chunk.
        separator: chunk key separator ("/" or ".").
        blosc: whether inner chunks are Blosc-compressed (else raw bytes).
        index_at_end: shard index location.
        index_crc: whether the index ends with a crc32c checksum.
    """

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    fill_value: Any
    shard_rows: int
    chunk_rows: int
    separator: str
    blosc: bool
    index_at_end: bool
    index_crc: bool

    @property
    def chunks_per_shard(self) -> int:
        """Inner chunks per shard object."""
        return self.shard_rows // self.chunk_rows

    @property
    def chunk_nbytes(self) -> int:
        """Decoded bytes of one inner chunk."""
        return self.chunk_rows * int(np.prod(self.shape[1:])) * self.dtype.itemsize

    @property
    def index_nbytes(self) -> int:
        """Bytes of the shard index, checksum included."""
        return 16 * self.chunks_per_shard + (4 if self.index_crc else 0)

    def shard_key(self, shard: int) -> str:
        """Store key of a shard object (default chunk key encoding)."""
        return self.separator.join(["c", str(shard), *["0"] * (len(self.shape) - 1)])

    @classmethod
    def parse(cls, meta: Mapping[str, Any]) -> ShardFormat | None:
        """The format of an array's zarr.json, or None when it is not one handled here."""
        try:
            return cls._parse(meta)
        except (KeyError, TypeError, ValueError, IndexError):
            return None

    @classmethod
    def _parse(cls, meta: Mapping[str, Any]) -> ShardFormat | None:
        if meta.get("zarr_format") != 3 or meta.get("storage_transformers"):
            return None
        shape = tuple(int(size) for size in meta["shape"])
        dtype = np.dtype(str(meta["data_type"]))
        fill = _fill_value(meta["fill_value"], dtype)
        grid_name, grid = _named(meta["chunk_grid"])
        key_name, key_config = _named(meta["chunk_key_encoding"])
        separator = str(key_config.get("separator", "/"))
        codecs = meta["codecs"]
        if (
            dtype.kind not in "fiu"
            or fill is None
            or len(shape) < 2
            or (grid_name, key_name) != ("regular", "default")
            or separator not in ("/", ".")
            or len(codecs) != 1
        ):
            return None
        shard_shape = tuple(int(size) for size in grid["chunk_shape"])
        parsed = _parse_sharding(codecs[0], dtype.itemsize)
        if parsed is None or shard_shape[1:] != shape[1:]:
            return None
        chunk_shape, blosc, at_end, crc = parsed
        if chunk_shape[1:] != shape[1:] or shard_shape[0] % chunk_shape[0]:
            return None
        return cls(
            shape, dtype, fill, shard_shape[0], chunk_shape[0], separator, blosc, at_end, crc
        )


def _parse_sharding(codec: Any, itemsize: int) -> tuple[tuple[int, ...], bool, bool, bool] | None:
    """(inner chunk shape, blosc, index at end, index crc32c) of a supported sharding codec."""
    name, config = _named(codec)
    if name != "sharding_indexed":
        return None
    inner, index = list(config["codecs"]), list(config["index_codecs"])
    if not inner or not _little_endian_bytes(inner[0], itemsize) or len(inner) > 2:
        return None
    blosc = len(inner) == 2
    if blosc and _named(inner[1])[0] != "blosc":
        return None
    if not index or not _little_endian_bytes(index[0], 8) or len(index) > 2:
        return None
    crc = len(index) == 2
    if crc and _named(index[1])[0] != "crc32c":
        return None
    location = config.get("index_location", "end")
    if location not in ("start", "end"):
        return None
    chunk_shape = tuple(int(size) for size in config["chunk_shape"])
    return chunk_shape, blosc, location == "end", crc


def parse_index(data: memoryview, fmt: ShardFormat, where: str) -> np.ndarray:
    """The [chunks_per_shard, 2] (offset, nbytes) table of a whole shard object.

    Raises:
        StoreError: the object is too short or its index checksum does not match.
    """
    size = fmt.index_nbytes
    if len(data) < size:
        raise StoreError(f"{where}: shard object of {len(data)} bytes has no complete index")
    raw = data[len(data) - size :] if fmt.index_at_end else data[:size]
    table = raw[: 16 * fmt.chunks_per_shard]
    if fmt.index_crc:
        import google_crc32c

        expected = int.from_bytes(raw[-4:], "little")
        if google_crc32c.value(bytes(table)) != expected:
            raise StoreError(f"{where}: shard index checksum mismatch")
    return np.frombuffer(table, dtype="<u8").reshape(fmt.chunks_per_shard, 2)


def decode_chunk(source: memoryview, dest: np.ndarray, blosc: bool, where: str) -> None:
    """Decode one inner chunk's stored bytes into dest (C-contiguous, exactly one chunk).

    Raises:
        StoreError: the stored chunk does not decode to exactly dest's size.
    """
    flat = dest.reshape(-1).view(np.uint8)
    if not blosc:
        if len(source) != flat.nbytes:
            raise StoreError(f"{where}: chunk of {len(source)} bytes, expected {flat.nbytes}")
        flat[:] = np.frombuffer(source, dtype=np.uint8)
        return
    decoded = int.from_bytes(source[4:8], "little") if len(source) >= _BLOSC_HEADER else -1
    if decoded != flat.nbytes:
        raise StoreError(f"{where}: Blosc chunk decodes to {decoded} bytes, not {flat.nbytes}")
    from numcodecs import blosc as numcodecs_blosc

    numcodecs_blosc.decompress(source, flat)


def _blosc_getitem() -> Callable[..., int] | None:
    """c-blosc's blosc_getitem from numcodecs' extension (None where it is not exported)."""
    global _GETITEM
    if _GETITEM is None:
        import ctypes

        from numcodecs import blosc as numcodecs_blosc

        function = getattr(ctypes.CDLL(numcodecs_blosc.__file__), "blosc_getitem", None)
        if function is not None:
            function.restype = ctypes.c_int
            function.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
        _GETITEM = (function,)
    return _GETITEM[0]


_GETITEM: tuple[Callable[..., int] | None] | None = None


def decode_items(
    source: bytes | memoryview, dest: np.ndarray, first: int, chunk_nbytes: int, where: str
) -> bool:
    """Decode items [first, first + dest.size) of a Blosc chunk into dest (C-contiguous),
    decompressing only the Blosc blocks that hold them (c-blosc's own blosc_getitem, so the
    bytes are those a full decode gives). A point lookup needs one row of a 16-row chunk:
    this decodes one 256 KiB block of three, not the whole chunk.

    Returns:
        False when blosc_getitem is not available (the caller decodes the whole chunk).

    Raises:
        StoreError: the chunk's header disagrees with its size, or c-blosc reports an error.
    """
    getitem = _blosc_getitem()
    if getitem is None:
        return False
    header = memoryview(source)[:_BLOSC_HEADER]
    decoded = int.from_bytes(header[4:8], "little") if len(header) == _BLOSC_HEADER else -1
    stored = int.from_bytes(header[12:16], "little") if decoded >= 0 else -1
    if decoded != chunk_nbytes or stored != len(source):  # c-blosc trusts its header
        raise StoreError(f"{where}: Blosc chunk header does not match its {len(source)} bytes")
    stored_bytes = np.frombuffer(source, np.uint8)  # its address, for as long as the call runs
    if getitem(stored_bytes.ctypes.data, first, dest.size, dest.ctypes.data) != dest.nbytes:
        raise StoreError(f"{where}: Blosc could not decode items {first}:{first + dest.size}")
    return True


def read_object(path: str) -> bytes | None:
    """Whole object at a path or URL; None if it does not exist."""
    try:
        if files.is_local(path):
            with open(files.native(path), "rb") as handle:
                return handle.read()
        return files.read_bytes(path)
    except FileNotFoundError:
        return None


Task = Callable[[], None]


class ShardScanner:
    """Reads row ranges of one array; shards mostly covered by the range are read whole."""

    def __init__(self, array_path: str, fmt: ShardFormat) -> None:
        self.path = array_path
        self.format = fmt

    @classmethod
    def open(cls, array_path: str) -> ShardScanner | None:
        """A scanner for the array at array_path, or None if its format is not handled here."""
        if sys.byteorder != "little":
            return None
        try:
            meta = json.loads(files.read_bytes(files.join(array_path, "zarr.json")))
        except (FileNotFoundError, ValueError):
            return None
        fmt = ShardFormat.parse(meta) if isinstance(meta, Mapping) else None
        return None if fmt is None else cls(array_path, fmt)

    def pieces(self, row_start: int, row_stop: int) -> list[tuple[int, int, int, bool]]:
        """(shard, start, stop, whole) per shard the range touches; whole when the range covers
        at least half of the shard's rows, so that reading the whole object pays off (point
        lookups stay byte-range reads of one inner chunk through zarr).
        """
        fmt, pieces = self.format, []
        first, last = row_start // fmt.shard_rows, (row_stop - 1) // fmt.shard_rows
        for shard in range(first, last + 1):
            shard_start = shard * fmt.shard_rows
            in_array = min(shard_start + fmt.shard_rows, fmt.shape[0]) - shard_start
            start, stop = max(row_start, shard_start), min(row_stop, shard_start + fmt.shard_rows)
            pieces.append((shard, start, stop, 2 * (stop - start) >= in_array))
        return pieces

    def read_range(
        self, row_start: int, row_stop: int, fallback: Callable[[int, int], np.ndarray]
    ) -> np.ndarray:
        """Rows [row_start, row_stop); pieces not worth a whole-object read use fallback.

        Raises:
            StoreError: the range is outside the array, or a shard object is corrupt.
        """
        fmt = self.format
        if not 0 <= row_start <= row_stop <= fmt.shape[0]:
            raise StoreError(f"{self.path}: rows {row_start}:{row_stop} outside {fmt.shape[0]}")
        out = np.empty((row_stop - row_start, *fmt.shape[1:]), dtype=fmt.dtype)
        futures: list[Future[None]] = []
        try:
            for shard, start, stop, whole in self.pieces(row_start, row_stop):
                target = out[start - row_start : stop - row_start]
                if not whole:
                    target[...] = fallback(start, stop)
                    continue
                tasks = self._shard_tasks(shard, start, stop, target)
                futures += _submit(tasks, last=stop == row_stop)
        finally:
            for future in futures:
                future.result()
        return out

    def _shard_tasks(self, shard: int, start: int, stop: int, target: np.ndarray) -> list[Task]:
        """Tasks filling target (rows [start, stop) of the array) from one shard object."""
        fmt = self.format
        where = files.join(self.path, fmt.shard_key(shard))
        data = read_object(where)
        if data is None:
            target[...] = fmt.fill_value
            return []
        view = memoryview(data)
        index = parse_index(view, fmt, where)
        tasks: list[Task] = []
        shard_start = shard * fmt.shard_rows
        for chunk in range(fmt.chunks_per_shard):
            chunk_start = shard_start + chunk * fmt.chunk_rows
            low, high = max(start, chunk_start), min(stop, chunk_start + fmt.chunk_rows)
            if low >= high:
                continue
            rows = target[low - start : high - start]
            offset, nbytes = (int(value) for value in index[chunk])
            if offset == MISSING:
                rows[...] = fmt.fill_value
                continue
            if offset + nbytes > len(view):
                raise StoreError(f"{where}: chunk {chunk} lies outside the object")
            source = view[offset : offset + nbytes]
            skip = low - chunk_start
            tasks.append(self._chunk_task(source, rows, skip, where))
        return tasks

    def _chunk_task(self, source: memoryview, rows: np.ndarray, skip: int, where: str) -> Task:
        """Decode into rows directly when they are the whole chunk, else through a scratch chunk."""
        fmt = self.format
        if skip == 0 and len(rows) == fmt.chunk_rows:
            return lambda: decode_chunk(source, rows, fmt.blosc, where)

        def partial() -> None:
            scratch = np.empty((fmt.chunk_rows, *fmt.shape[1:]), dtype=fmt.dtype)
            decode_chunk(source, scratch, fmt.blosc, where)
            rows[...] = scratch[skip : skip + len(rows)]

        return partial


def _run_all(tasks: list[Task]) -> None:
    for task in tasks:
        task()


def _submit(tasks: list[Task], last: bool) -> list[Future[None]]:
    """Spread tasks over the decode pool in contiguous groups; a lone task of the last shard
    runs inline (nothing is left to overlap it with)."""
    if not tasks:
        return []
    if len(tasks) == 1 and last:
        tasks[0]()
        return []
    groups = min(len(tasks), decode_threads())
    bounds = np.linspace(0, len(tasks), groups + 1).astype(int)
    return [decode_pool().submit(_run_all, tasks[a:b]) for a, b in itertools.pairwise(bounds)]
