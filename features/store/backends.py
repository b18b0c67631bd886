"""Array backends holding one view's features [rows, variants, *feature_shape], behind one ABC."""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from features import files
from features.store.point_read import read_sparse_rows
from features.store.row_scatter import RowScatter, ScatterRequest, scatter_from_values
from schemas.errors import ConfigError, StoreError

# Inner chunks of about 1 MiB: few enough for fast scans, small enough for point lookups.
TARGET_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class BloscSettings:
    """Blosc parameters of the features array's inner chunks (Zarr's `blosc` codec)."""

    cname: Literal["zstd", "lz4"]
    clevel: int
    shuffle: Literal["shuffle", "bitshuffle"]

    def matches(self, codecs: Sequence[Mapping[str, Any]]) -> bool:
        """Whether zarr.json's inner compressors (codec dicts) are exactly these settings."""
        wanted = {"cname": self.cname, "clevel": self.clevel, "shuffle": self.shuffle}
        if len(codecs) != 1 or codecs[0].get("name") != "blosc":
            return False
        config = codecs[0].get("configuration") or {}
        return {key: config.get(key) for key in wanted} == wanted


# Compression of the inner chunks, by name; None stores raw little-endian bytes.
COMPRESSIONS: dict[str, BloscSettings | None] = {
    "zstd": BloscSettings("zstd", 1, "shuffle"),  # smallest, slowest to decode
    "lz4": BloscSettings("lz4", 5, "bitshuffle"),  # the default: see below
    "none": None,  # reads are plain copies; largest
}
# lz4 decodes about 2.5x faster than zstd for 12-19 % more bytes: head training streams the
# features every epoch, and with zstd a 2-core machine cannot decode wide views faster than
# 1 GB/s (benchmarks.train_input). Views created before this default keep their zstd.
DEFAULT_COMPRESSION = "lz4"
# Blosc's own block size for chunks of these rows (it picks 256 KiB for a narrow chunk).
AUTOMATIC_BLOSC_BLOCK_BYTES = 256 * 1024


def blosc_block_bytes(row_bytes: int) -> int:
    """Blosc block size for a chunk of rows of row_bytes: one row per block when a row fits
    in Blosc's automatic block, else automatic (0).

    A point read decodes only the blocks holding its rows (blosc_getitem): a row-sized block
    decodes one narrow row's 33 KB instead of a 256 KiB block of 8 rows. The same data
    compresses to the same size (92 % either way on ReLU-like rows) and a whole chunk
    decodes about 2x faster (more blocks for Blosc's threads).
    """
    return row_bytes if row_bytes <= AUTOMATIC_BLOSC_BLOCK_BYTES else 0
# What a layout may record: the COMPRESSIONS choices, or "lzf", which HDF5 writes for both
# Blosc choices (h5py has no Blosc) and records as such.
RECORDED_COMPRESSIONS = frozenset({*COMPRESSIONS, "lzf"})


def check_compression(name: str) -> str:
    """Return name if it is a registered compression.

    Raises:
        ConfigError: an unknown name; the message lists the choices.
    """
    if name not in COMPRESSIONS:
        raise ConfigError(f"compression {name!r} is unknown; choose one of {sorted(COMPRESSIONS)}")
    return name


@dataclass(frozen=True)
class ArrayLayout:
    """Shape and chunking of a features array.

    Attributes:
        rows: number of allocated rows.
        variants: size of the variant axis.
        feature_shape: shape of one variant's features.
        dtype: storage dtype name.
        shard_rows: rows per shard, the unit one worker writes in one go.
        compression: the codec actually written: a key of COMPRESSIONS, or "lzf" (HDF5).

    Raises:
        ConfigError: an unknown compression.
    """

    rows: int
    variants: int
    feature_shape: tuple[int, ...]
    dtype: str
    shard_rows: int
    compression: str = DEFAULT_COMPRESSION

    def __post_init__(self) -> None:
        if self.compression not in RECORDED_COMPRESSIONS:
            check_compression(self.compression)

    @property
    def shape(self) -> tuple[int, ...]:
        """Full array shape."""
        return (self.rows, self.variants, *self.feature_shape)

    @property
    def row_bytes(self) -> int:
        """Uncompressed bytes of one row (all variants)."""
        return self.variants * int(np.prod(self.feature_shape)) * np.dtype(self.dtype).itemsize

    @property
    def chunk_rows(self) -> int:
        """Rows per inner chunk: the largest divisor of shard_rows whose chunk stays within
        TARGET_CHUNK_BYTES (at least 1). Narrow rows (33 KB) get 16-32-row chunks, so scans
        decode few large chunks; wide rows (846 KB) get 1-row chunks, so point lookups stay small.
        """
        limit = max(1, TARGET_CHUNK_BYTES // max(1, self.row_bytes))
        return max(
            d for d in range(1, self.shard_rows + 1) if self.shard_rows % d == 0 and d <= limit
        )


class FeatureArray(abc.ABC):
    """A features array in some storage format; one writer per shard, many readers."""

    format_name: ClassVar[str]
    directory_name: ClassVar[str]
    # Whether finalize() needs the committed shards (reading every marker costs a request
    # per shard on an object store; formats that publish nothing skip it).
    finalize_reads_shards: ClassVar[bool] = False

    def __init__(self, view_path: str) -> None:
        self.path = files.join(view_path, self.directory_name)

    @classmethod
    def written_compression(cls, requested: str) -> str:
        """The codec this format writes (and records) for a COMPRESSIONS choice.

        Raises:
            ConfigError: an unknown choice.
        """
        return check_compression(requested)

    @abc.abstractmethod
    def create(self, layout: ArrayLayout) -> None:
        """Create an empty array (NaN-filled) with this layout, replacing nothing."""

    @abc.abstractmethod
    def layout(self) -> ArrayLayout:
        """Layout of the existing array."""

    @abc.abstractmethod
    def write_shard(self, row_start: int, values: np.ndarray) -> None:
        """Write one whole shard starting at a shard boundary, in a single write."""

    @abc.abstractmethod
    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Read arbitrary rows (sorted, unique) as [len(rows), variants, *feature_shape]."""

    @abc.abstractmethod
    def read_range(self, row_start: int, row_stop: int) -> np.ndarray:
        """Read a contiguous block of rows."""

    @abc.abstractmethod
    def resize(self, rows: int) -> None:
        """Grow the row axis (new rows are NaN); existing rows are untouched."""

    def read_scattered(self, rows: np.ndarray) -> np.ndarray:
        """Rows (sorted, unique) spread over many shards, reading only the chunks holding them.

        Formats with a byte-range path override this; this one is read_rows.
        """
        return self.read_rows(rows)

    def scatter_rows(self, request: ScatterRequest, out: np.ndarray) -> None:
        """Copy rows (one variant each, or all) into slots of out: out[slots[i]] = row i.

        Formats with a faster path override this; this one reads the rows, then places them.
        """
        rows = request.rows
        if len(rows) == 0:
            return
        contiguous = int(rows[-1]) - int(rows[0]) + 1 == len(rows)
        values = self.read_range(int(rows[0]), int(rows[-1]) + 1) if contiguous else None
        scatter_from_values(self.read_rows(rows) if values is None else values, request, out)

    @abc.abstractmethod
    def shard_key(self, shard_index: int) -> str:
        """Path of the stored object holding one shard's features, relative to self.path."""

    def shard_checksum(self, shard_index: int) -> tuple[str, str, int]:
        """Integrity record of one shard, from the bytes actually stored.

        Returns:
            (the object's path relative to the view, sha256 of its bytes or "" when the
            object does not exist: Zarr stored nothing for an all-NaN shard before shard writes
            set write_empty_chunks, so older views can lack such objects; its size in bytes).
        """
        relative = f"{self.directory_name}/{self.shard_key(shard_index)}"
        try:
            data = files.read_bytes(files.join(self.path, self.shard_key(shard_index)))
        except FileNotFoundError:
            return relative, "", 0
        return relative, hashlib.sha256(data).hexdigest(), len(data)

    def finalize(self, committed: Sequence[Any]) -> None:
        """Publish reader-side metadata after a run (committed: ShardSpecs with markers)."""
        del committed  # formats whose writes are self-describing need nothing here

    def exists(self) -> bool:
        """Whether the array has been created."""
        return files.exists(self.path)


class ZarrFeatureArray(FeatureArray):
    """Zarr v3 array using the sharding codec.

    Outer chunks (zarr shards) are exactly one pipeline shard: shard_rows rows, all variants,
    whole features, so one worker writes one object whole. Inner chunks are about 1 MiB of
    rows (ArrayLayout.chunk_rows), so a point lookup reads one inner chunk through the shard
    index instead of the whole shard, and a scan decodes few, large chunks.
    """

    format_name = "zarr"
    directory_name = "features.zarr"
    _scatter: RowScatter | Literal[False] | None = None  # opened on first scatter_rows
    # The shard writer's handle, opened once: under the view's lease no other process
    # resizes the array, and resize() here drops it. Readers keep opening fresh (a writer
    # elsewhere may grow the array between their reads).
    _writer: Any = None
    _write_store: Any = None  # the WholeShardWrites under _writer (checksums of shards set)
    _feature_rank: int | None = None  # immutable once the array exists (shard_key needs it)

    def _open(self) -> Any:
        import zarr

        try:
            # zarr_format=3: without it zarr also probes for Zarr v2 metadata (.zarray,
            # .zattrs: two more requests per open on an object store).
            return zarr.open_array(
                store=files.native(self.path),
                mode="r+" if files.is_local(self.path) else "a",
                zarr_format=3,
            )
        except (FileNotFoundError, ValueError) as error:
            raise StoreError(
                f"{self.path}: not a readable Zarr features array ({error})"
            ) from error

    def create(self, layout: ArrayLayout) -> None:
        import zarr
        from zarr.codecs import BloscCodec

        blosc = COMPRESSIONS[layout.compression]
        array = zarr.create_array(
            store=files.native(self.path),
            shape=layout.shape,
            dtype=layout.dtype,
            chunks=(layout.chunk_rows, layout.variants, *layout.feature_shape),
            shards=(layout.shard_rows, layout.variants, *layout.feature_shape),
            compressors=None
            if blosc is None
            else [
                BloscCodec(
                    cname=blosc.cname,
                    clevel=blosc.clevel,
                    shuffle=blosc.shuffle,
                    blocksize=blosc_block_bytes(layout.row_bytes),
                )
            ],
            fill_value=float("nan"),
            dimension_names=[
                "row",
                "variant",
                *[f"f{i}" for i in range(len(layout.feature_shape))],
            ],
            attributes={"shard_rows": layout.shard_rows},
        )
        del array
        self._writer, self._write_store, self._feature_rank = None, None, None

    def layout(self) -> ArrayLayout:
        array = self._open()
        shape = tuple(int(size) for size in array.shape)
        return ArrayLayout(
            rows=shape[0],
            variants=shape[1],
            feature_shape=shape[2:],
            dtype=str(array.dtype),
            shard_rows=int(array.attrs["shard_rows"]),
            compression=self._compression_name(array.compressors),
        )

    def _compression_name(self, compressors: Sequence[Any]) -> str:
        """The COMPRESSIONS name of an array's inner compressors, as zarr.json records them.

        Raises:
            StoreError: codecs this store never writes.
        """
        codecs = [codec.to_dict() for codec in compressors]
        for name, blosc in COMPRESSIONS.items():
            if (blosc is None and not codecs) or (blosc is not None and blosc.matches(codecs)):
                return name
        raise StoreError(f"{self.path}: inner codecs {codecs} are none of {sorted(COMPRESSIONS)}")

    def shard_key(self, shard_index: int) -> str:
        # Zarr v3's default chunk key encoding: c/<row shard>/0/0/... (one shard spans the rest).
        if self._feature_rank is None:
            self._feature_rank = len(self.layout().feature_shape)
        dimensions = 2 + self._feature_rank
        return "/".join(["c", str(shard_index), *["0"] * (dimensions - 1)])

    def write_shard(self, row_start: int, values: np.ndarray) -> None:
        if self._writer is None:
            import zarr

            from features.store.zarr_writes import WholeShardWrites

            # write_empty_chunks: Zarr would otherwise compare every inner chunk with the NaN
            # fill (np.array_equal with equal_nan on float16: about 70 % of a narrow shard's
            # write CPU, benchmarks.gpu_feed). A shard is written whole, so an all-NaN shard
            # (every row failed) is simply stored; readers see NaN either way.
            self._write_store = WholeShardWrites.for_path(self.path)
            array = zarr.open_array(store=self._write_store, mode="r+", zarr_format=3)
            self._writer = array.with_config({"write_empty_chunks": True})
        self._writer[row_start : row_start + values.shape[0]] = values

    def shard_checksum(self, shard_index: int) -> tuple[str, str, int]:
        """The checksum hashed while this process wrote the shard (no read back); shards
        written another way (bulk writers) are read back."""
        key = self.shard_key(shard_index)
        hashed = self._write_store.take_checksum(key) if self._write_store else None
        if hashed is None:
            return super().shard_checksum(shard_index)
        return f"{self.directory_name}/{key}", hashed[0], hashed[1]

    def resize(self, rows: int) -> None:
        array = self._open()
        array.resize((rows, *array.shape[1:]))
        self._writer = self._write_store = None

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        if len(rows) == 0:
            layout = self.layout()
            return np.empty((0, layout.variants, *layout.feature_shape), dtype=layout.dtype)
        return np.asarray(self._open().get_orthogonal_selection((rows,)))

    def read_range(self, row_start: int, row_stop: int) -> np.ndarray:
        """Rows [row_start, row_stop): shards the range mostly covers are read as whole objects
        and decoded in threads (features.store.shard_reader); the rest goes through zarr.
        """
        from features.store.shard_reader import ShardScanner

        scanner = ShardScanner.open(self.path) if 0 <= row_start < row_stop else None
        if scanner is None or row_stop > scanner.format.shape[0]:
            return np.asarray(self._open()[row_start:row_stop])
        fmt = scanner.format
        if not fmt.blosc and files.is_local(self.path):
            # Raw chunks on a local disk: positioned reads straight into the output.
            from features.store.shard_reader import decode_pool

            out = np.empty((row_stop - row_start, *fmt.shape[1:]), fmt.dtype)
            rows = np.arange(row_start, row_stop)
            request = ScatterRequest(rows, None, rows - row_start)
            RowScatter(self.path, fmt).scatter(request, out, decode_pool())
            return out
        array: list[Any] = []

        def through_zarr(start: int, stop: int) -> np.ndarray:
            if not array:
                array.append(self._open())
            return np.asarray(array[0][start:stop])

        return scanner.read_range(row_start, row_stop, through_zarr)

    def read_scattered(self, rows: np.ndarray) -> np.ndarray:
        """Byte-range reads of each touched shard's index and chunks (features.store.point_read)."""
        from features.store.shard_reader import ShardScanner

        scanner = ShardScanner.open(self.path) if len(rows) else None
        if scanner is None or rows[-1] >= scanner.format.shape[0]:
            return self.read_rows(rows)
        return read_sparse_rows(self.path, scanner.format, rows)

    def scatter_rows(self, request: ScatterRequest, out: np.ndarray) -> None:
        """Rows read straight into their slots (features.store.row_scatter) when the layout
        is the one this store writes; otherwise the generic read-then-place."""
        scatter, rows = self._scatter, request.rows
        grown = (
            isinstance(scatter, RowScatter) and len(rows) and rows[-1] >= scatter.format.shape[0]
        )
        if scatter is None or grown:  # opened once, and again only after the array grew
            scatter = self._scatter = RowScatter.open(self.path) or False
        if scatter:
            scatter.scatter(request, out)
        else:
            super().scatter_rows(request, out)
