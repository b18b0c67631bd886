"""One reader (the store's own, tensorstore or zarr-python) timing one read of a Zarr v3 view.

Runs in whatever interpreter has the library: the newest zarr-python needs Python 3.12 and
tensorstore is not a product dependency, so benchmarks.reader_choice starts this file as a
script with a separate virtualenv's python. It imports only the standard library and numpy,
plus the leg's own library (the store's code only for the "hand" leg).

Every leg reads the same rows into the same shapes; what each operation is:
- scan: every row in order, --range-rows at a time (the training input's window);
- points: sorted unique rows (1 or 1k, seeded) in one call;
- epoch: shard-sized blocks in a seeded random order, cut into windows of --range-rows rows;
  each window's rows go to a seeded permutation of slots of one preallocated buffer.
The result digest (sha256 of the bytes delivered, in order) must match across legs.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from typing import Any

import numpy as np

LEGS = ("hand", "tensorstore", "zarr")
OPERATIONS = ("scan", "points1", "points1k", "epoch")
S3_CREDENTIALS = {"key": "testing", "secret": "testing"}


def drop_page_cache(root: str) -> bool:
    """Ask the kernel to drop every file under root from the page cache (after a sync).

    Returns False where posix_fadvise is missing or refused (the cold figure then only
    means a fresh process).
    """
    if not hasattr(os, "posix_fadvise"):
        return False
    os.sync()  # dirty pages cannot be dropped
    try:
        for folder, _, names in os.walk(root):
            for name in names:
                descriptor = os.open(os.path.join(folder, name), os.O_RDONLY)
                try:
                    os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(descriptor)
    except OSError:
        return False
    return True


class Reader:
    """What every leg implements: a row range, sorted rows, and rows into slots."""

    version = ""
    shape: tuple[int, ...] = ()

    def scan(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as [rows, variants, *features]."""
        raise NotImplementedError

    def points(self, rows: np.ndarray) -> np.ndarray:
        """Sorted unique rows as [len(rows), variants, *features]."""
        raise NotImplementedError

    def gather(self, blocks: list[tuple[np.ndarray, np.ndarray]], out: np.ndarray) -> None:
        """out[slots] = rows (variant 0) for each (rows, slots) block, blocks read in parallel."""
        pool = self._pool()
        for future in [pool.submit(self._place, rows, slots, out) for rows, slots in blocks]:
            future.result()

    def _place(self, rows: np.ndarray, slots: np.ndarray, out: np.ndarray) -> None:
        """Read one block's row range, then copy its rows to their slots (a library cannot
        decode into scattered slots, so this is its closest form of the training input)."""
        first = int(rows[0])
        out[slots] = self.scan(first, int(rows[-1]) + 1)[rows - first, 0]

    def _pool(self) -> ThreadPoolExecutor:
        if not hasattr(self, "_threads"):
            self._threads = ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1)))
        return self._threads


class HandReader(Reader):
    """The store's own reader, through the API the product calls: ZarrFeatureArray.read_range
    (scans), read_scattered (point reads, as query.read_feature_rows calls it) and
    scatter_rows per block in a read pool (as input_stream.BlockReader does)."""

    def __init__(self, view_path: str) -> None:
        from features.store.backends import ZarrFeatureArray
        from features.store.shard_reader import ShardScanner

        self.array = ZarrFeatureArray(view_path)
        scanner = ShardScanner.open(self.array.path)  # zarr.json, as each read_range reads it
        if scanner is None:
            raise ValueError(f"{view_path}: not a layout the hand-written reader handles")
        self.shape = scanner.format.shape
        self.version = "hand-written (features.store shard_reader, point_read, row_scatter)"

    def scan(self, start: int, stop: int) -> np.ndarray:
        return self.array.read_range(start, stop)

    def points(self, rows: np.ndarray) -> np.ndarray:
        return self.array.read_scattered(rows)

    def _place(self, rows: np.ndarray, slots: np.ndarray, out: np.ndarray) -> None:
        from features.store.row_scatter import ScatterRequest

        request = ScatterRequest(rows, np.zeros(len(rows), np.int64), slots)
        self.array.scatter_rows(request, out)


class TensorstoreReader(Reader):
    """tensorstore's zarr3 driver on a file or s3 kvstore, default context."""

    def __init__(self, view_path: str, endpoint: str | None) -> None:
        import tensorstore as ts

        array_path = f"{view_path.rstrip('/')}/features.zarr/"
        if array_path.startswith("s3://"):
            bucket, _, key = array_path[5:].partition("/")
            kvstore: dict[str, Any] = {"driver": "s3", "bucket": bucket, "path": key}
            kvstore |= {"endpoint": endpoint, "aws_region": "us-east-1"}
            os.environ.setdefault("AWS_ACCESS_KEY_ID", S3_CREDENTIALS["key"])
            os.environ.setdefault("AWS_SECRET_ACCESS_KEY", S3_CREDENTIALS["secret"])
        else:
            kvstore = {"driver": "file", "path": array_path}
        self.array = ts.open({"driver": "zarr3", "kvstore": kvstore}, read=True).result()
        self.shape = tuple(int(size) for size in self.array.shape)
        self.version = f"tensorstore {metadata.version('tensorstore')}"

    def scan(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.array[start:stop].read().result())

    def points(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.array[rows].read().result())


class ZarrReader(Reader):
    """zarr-python's Array with its default config (async codec pipeline)."""

    def __init__(self, view_path: str, endpoint: str | None) -> None:
        import zarr

        url = f"{view_path.rstrip('/')}/features.zarr"
        options = None
        if url.startswith("s3://"):
            options = {**S3_CREDENTIALS, "client_kwargs": {"endpoint_url": endpoint}}
        self.array = zarr.open_array(url, mode="r", storage_options=options)
        self.shape = tuple(int(size) for size in self.array.shape)
        self.version = f"zarr-python {zarr.__version__} (Python {sys.version.split()[0]})"

    def scan(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.array[start:stop])

    def points(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.array.get_orthogonal_selection((rows,)))


def open_reader(leg: str, view_path: str, endpoint: str | None = None) -> Reader:
    """The reader of one leg."""
    if leg == "hand":
        return HandReader(view_path)
    if leg == "tensorstore":
        return TensorstoreReader(view_path, endpoint)
    return ZarrReader(view_path, endpoint)


def epoch_windows(
    rows: int, block_rows: int, window_rows: int
) -> Iterator[list[tuple[np.ndarray, np.ndarray]]]:
    """(rows, slots) blocks per window: blocks shuffled, each window's slots permuted."""
    rng = np.random.default_rng(1)
    blocks = [
        np.arange(start, min(rows, start + block_rows)) for start in range(0, rows, block_rows)
    ]
    order = np.concatenate([blocks[index] for index in rng.permutation(len(blocks))])
    for start in range(0, len(order), window_rows):
        window = order[start : start + window_rows]
        slots = rng.permutation(len(window))
        pieces: list[tuple[np.ndarray, np.ndarray]] = []
        breaks = [0, *(np.flatnonzero(np.diff(window // block_rows)) + 1).tolist(), len(window)]
        for low, high in itertools.pairwise(breaks):
            pieces.append((window[low:high], slots[low:high]))
        yield pieces


def point_rows(rows: int, count: int) -> np.ndarray:
    """count sorted unique rows, seeded; one row is the middle one."""
    if count == 1:
        return np.array([rows // 2])
    return np.sort(np.random.default_rng(0).choice(rows, size=min(count, rows), replace=False))


def operation(
    reader: Reader, name: str, rows: int, range_rows: int, block_rows: int
) -> Callable[[], str]:
    """The named operation over the first `rows` rows; it returns the digest of what it read."""

    def scan() -> str:
        digest = hashlib.sha256()
        for start in range(0, rows, range_rows):
            digest.update(reader.scan(start, min(rows, start + range_rows)).tobytes())
        return digest.hexdigest()

    def points() -> str:
        picked = point_rows(rows, 1 if name == "points1" else 1000)
        return hashlib.sha256(reader.points(picked).tobytes()).hexdigest()

    def epoch() -> str:
        digest = hashlib.sha256()
        out = np.empty((range_rows, *reader.shape[2:]), np.float16)
        for blocks in epoch_windows(rows, block_rows, range_rows):
            reader.gather(blocks, out)
            digest.update(out[: sum(len(slots) for _, slots in blocks)].tobytes())
        return digest.hexdigest()

    return {"scan": scan, "points1": points, "points1k": points, "epoch": epoch}[name]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Cold (open + first call, page cache dropped when asked) and warm (median) timings."""
    dropped = drop_page_cache(args.view) if args.drop_cache else False
    started = time.perf_counter()
    reader = open_reader(args.leg, args.view, args.endpoint)
    rows = min(args.rows or reader.shape[0], reader.shape[0])
    run = operation(reader, args.op, rows, args.range_rows, args.block_rows)
    digest = run()
    cold = time.perf_counter() - started
    warm, cpu = [], []
    for _ in range(args.repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        if run() != digest:
            raise AssertionError(f"{args.leg} {args.op}: a repeat read different bytes")
        warm.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
    return {
        "leg": args.leg,
        "op": args.op,
        "version": reader.version,
        "python": sys.version.split()[0],
        "rows": rows,
        "cold_ms": cold * 1000,
        "warm_ms": statistics.median(warm) * 1000 if warm else None,
        # CPU of all the process's threads: on a loaded machine a leg with more threads takes
        # a larger share of the cores, so its wall time alone flatters it.
        "warm_cpu_ms": statistics.median(cpu) * 1000 if cpu else None,
        "page_cache_dropped": dropped,
        "digest": digest,
    }


def build_parser() -> argparse.ArgumentParser:
    """Arguments of one leg's run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leg", choices=LEGS, required=True)
    parser.add_argument("--op", choices=OPERATIONS, required=True)
    parser.add_argument("--view", required=True, help="view folder (local path or s3:// URL)")
    parser.add_argument("--endpoint", help="S3 endpoint URL (the moto test server)")
    parser.add_argument("--rows", type=int, default=0, help="only the first rows (0: all)")
    parser.add_argument("--range-rows", type=int, default=4096, help="rows per scan / window")
    parser.add_argument("--block-rows", type=int, default=64, help="rows per epoch block")
    parser.add_argument("--repeats", type=int, default=3, help="warm repeats (median)")
    parser.add_argument("--drop-cache", action="store_true", help="drop the view's page cache")
    return parser


def _preload(leg: str) -> None:
    """Import the leg's libraries untimed: a cold read is a first read, not an import."""
    import numcodecs.blosc  # noqa: F401

    if leg == "tensorstore":
        import tensorstore  # noqa: F401
    else:
        import zarr  # noqa: F401
    if leg == "hand":  # the store's modules (pyarrow, fsspec) and its decode pool
        from features.store import backends, point_read, row_scatter  # noqa: F401
        from features.store.shard_reader import decode_pool

        decode_pool()


if __name__ == "__main__":
    arguments = build_parser().parse_args()
    _preload(arguments.leg)
    print(json.dumps(measure(arguments)))
