"""Benchmark: read cost of a committed view at 10k, 100k and 1M rows (files, requests, time).

Two shapes. The real narrow view (irnv2_mlsp_narrow: 16,928 float16 values per row, lz4,
shards of 64 rows, ReLU-like seeded features that compress like activations, about 2 MB
shard objects) at 10k and 100k rows; and, for 1M rows, a metadata-only view (one 320-value
tap, constant features, few-KB shards) that measures the index and snapshot side at a
size whose features would not fit this machine's disk budget. A snapshot covers all but the
last two shards, committed after it (so lookups also exercise shards committed since).
Measured: a 1-id lookup, a 1k-id lookup (random ids) and index(), cold (a fresh process,
libraries imported, the store's files dropped from the page cache where posix_fadvise
allows) and warm (the same process again, median of --repeats); the files opened under the
store for a 1-id lookup (an audit hook sees every Python-level open); and the requests an
object store would get (a memory:// copy of the view whose filesystem counts HEAD/LIST/GET).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa

from benchmarks.read_audit import RequestCounter, count_opens
from benchmarks.reader_legs import drop_page_cache
from features import files
from features.cli import add_common_arguments, configure_logging, run_cli
from features.extraction.planning import allocate_rows
from features.store import FeatureStore, ensure_store, publish_snapshot
from features.store.view import FeatureView
from schemas.tables import MANIFEST_SCHEMA
from schemas.view_spec import NARROW_VIEW, PREDEFINED_VIEWS, FeatureViewSpec

LOGGER = logging.getLogger(__name__)
VIEW = "scale"
NARROW = replace(PREDEFINED_VIEWS[NARROW_VIEW], name=VIEW)  # 16,928 fp16 per row, the real one
# The metadata-only shape: 320 fp16 per row, constant features (index and snapshot cost at 1M).
METADATA = FeatureViewSpec(name=VIEW, taps=("mixed_5b",), weights_id="random:1")
SHARD_ROWS = 64
BLOCK_BYTES = 128 * 2**20  # features are written in blocks about this big, then committed
BUDGETS = {
    "files_1id": 12,
    "lookup_1id_ms": 20.0,
    "lookup_1k_ms": 500.0,
    "index_ms_1m": 1000.0,
    "ratio": 1.5,
}


def _image_id(row: int) -> str:
    return f"{100000 + row:08d}"


def _manifest(n: int) -> pa.Table:
    ids = [_image_id(i) for i in range(n)]
    return pa.table(
        {
            "dataset": ["ava"] * n,
            "image_id": ids,
            "uri": [f"/x/{i}.jpg" for i in ids],
            "bytes": [1] * n,
            "width": [500] * n,
            "height": [375] * n,
            "sha256": ["0" * 64] * n,
            "split": ["train"] * n,
        },
        schema=MANIFEST_SCHEMA,
    )


def _index(view: FeatureView, start: int, stop: int) -> pa.Table:
    rows = stop - start
    return pa.table(
        {
            "image_id": [_image_id(row) for row in range(start, stop)],
            "row": np.arange(start, stop, dtype=np.int64),
            "status": ["ok"] * rows,
            "error": pa.nulls(rows, pa.string()),
            "dataset": ["ava"] * rows,
            "split": ["train"] * rows,
            "width": np.full(rows, 500, np.int32),
            "height": np.full(rows, 375, np.int32),
            "read_ms": np.ones(rows, np.float32),
            "decode_ms": np.ones(rows, np.float32),
            "model_ms": np.ones(rows, np.float32),
        }
    )


def relu_like_block(rng: np.random.Generator, rows: int, shape: tuple[int, ...]) -> np.ndarray:
    """[rows, 1, *shape] non-negative float16, about 40 % zeros, like pooled ReLU activations
    (benchmarks.train_input.relu_like, drawn in float32 to keep 100k rows quick)."""
    values = rng.standard_normal((rows, 1, *shape), dtype=np.float32)
    values += 0.3
    np.maximum(values, 0.0, out=values)
    return values.astype(np.float16)


def build_view(root: str, n: int, metadata_only: bool) -> dict[str, float]:
    """A committed view of n rows; a snapshot covers all but the last two shards."""
    started = time.perf_counter()
    ensure_store(root)
    view = FeatureView(root, VIEW)
    spec = METADATA if metadata_only else NARROW
    view.ensure(spec, allocate_rows(_manifest(n)), SHARD_ROWS, "zarr", "lz4")
    row_bytes = 2 * math.prod(spec.feature_shape)
    block_rows = max(SHARD_ROWS, BLOCK_BYTES // row_bytes // SHARD_ROWS * SHARD_ROWS)
    rng = np.random.default_rng(0)
    for start in range(0, n, block_rows):
        stop = min(n, start + block_rows)
        if metadata_only:
            block = np.zeros((stop - start, 1, *spec.feature_shape), np.float16)
        else:
            block = relu_like_block(rng, stop - start, spec.feature_shape)
        block[:, 0, 0] = np.arange(start, stop) % 2048  # the row, so lookups can be checked
        view.array.write_shard(start, block)
    shards = view.shards()
    for shard in shards[:-2]:
        view.commit_shard(shard, None, _index(view, shard.row_start, shard.row_stop), "bench")
    built = time.perf_counter()
    publish_snapshot(view, "bench")
    published = time.perf_counter()
    for shard in shards[-2:]:
        view.commit_shard(shard, None, _index(view, shard.row_start, shard.row_stop), "bench")
    return {"build_s": built - started, "snapshot_s": published - built, "shards": len(shards)}


def _random_ids(n: int, count: int) -> list[str]:
    rows = np.random.default_rng(0).choice(n, size=min(count, n), replace=False)
    return [_image_id(int(row)) for row in rows]


def _operations(root: str, n: int) -> dict[str, Callable[[], Any]]:
    last = _image_id(n - 1)  # in a shard committed after the snapshot
    middle = _image_id(n // 2)
    many = _random_ids(n, 1000)
    return {
        "lookup_1id": lambda: FeatureStore(root).table(VIEW, ids=[middle]),
        "lookup_1id_after_snapshot": lambda: FeatureStore(root).table(VIEW, ids=[last]),
        "lookup_1k": lambda: FeatureStore(root).table(VIEW, ids=many),
        "index": lambda: FeatureStore(root).index(VIEW),
    }


def _check(name: str, result: Any, n: int) -> None:
    """Lookups must return the right rows (features hold the row mod 2048 in slot 0)."""
    if name == "index":
        if result.num_rows != n:
            raise AssertionError(f"index() returned {result.num_rows} rows, not {n}")
        return
    rows = result.column("row").to_numpy()
    values = result.column("features").combine_chunks().to_numpy_ndarray()[:, 0, 0]
    if not np.array_equal(values, (rows % 2048).astype(np.float16)):
        raise AssertionError(f"{name}: features do not match their rows")


def measure(root: str, n: int, name: str, repeats: int) -> dict[str, Any]:
    """Cold (first call in this process, the store's files dropped from the page cache) and
    warm (median of repeats) time of one operation.

    Libraries are imported before the cold call (pyarrow imports pandas lazily on first use, 0.5 s
    here): a cold read is a new process's first read, not its import time.
    """
    import numcodecs.blosc  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import zarr  # noqa: F401

    operation = _operations(root, n)[name]
    dropped = drop_page_cache(root)
    started = time.perf_counter()
    result = operation()
    cold = time.perf_counter() - started
    _check(name, result, n)
    warm, cpu = [], []
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        operation()
        warm.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
    return {
        "cold_ms": cold * 1000,
        "warm_ms": statistics.median(warm) * 1000,
        "warm_cpu_ms": statistics.median(cpu) * 1000,  # all threads: wall on a loaded machine
        "page_cache_dropped": dropped,
    }


def object_store_requests(root: str, n: int) -> dict[str, dict[str, int]]:
    """Requests per read against a memory:// copy of the store."""
    from fsspec.implementations.memory import MemoryFile

    url = f"memory://scale-{n}"
    fs, inner = files.filesystem(url)
    # Straight into the filesystem's dict: pipe_file checks parents by scanning every key,
    # quadratic over the 47k files of the 1M-row view.
    for directory, _, names in os.walk(root):
        for name in names:
            local = os.path.join(directory, name)
            key = f"{inner}/{os.path.relpath(local, root)}"
            with open(local, "rb") as handle:
                fs.store[key] = MemoryFile(fs, key, handle.read())
    counter = RequestCounter()
    counter.install()
    result = {}
    for name, operation in _operations(url, n).items():
        if name == "index" and n > 100_000:
            continue
        _check(name, operation(), n)
        counter.reset()
        operation()
        result[name] = counter.reset()
    for key in [key for key in fs.store if key.startswith(f"{inner}/")]:
        del fs.store[key]  # fs.rm lists every pseudo-directory: quadratic here too
    return result


def _child(args: argparse.Namespace) -> int:
    """One measurement in this (fresh) process, printed as JSON."""
    root, n = args.root, args.rows
    result: dict[str, Any] = {}
    if args.measure == "files":
        ops = _operations(root, n)
        result["files_1id"] = count_opens(root, ops["lookup_1id"])
        result["files_1id_after_snapshot"] = count_opens(root, ops["lookup_1id_after_snapshot"])
    elif args.measure == "requests":
        result["requests"] = object_store_requests(root, n)
    else:
        result[args.measure] = measure(root, n, args.measure, args.repeats)
    print(json.dumps(result))
    return 0


def _in_fresh_process(root: str, n: int, what: str, repeats: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.store_scale", "--child", "--root", root]
    command += ["--rows", str(n), "--measure", what, "--repeats", str(repeats)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(output.strip().splitlines()[-1]))


def bench_size(
    base: str, n: int, repeats: int, keep: bool, metadata_only: bool = False
) -> dict[str, Any]:
    """Build one view (or reuse one a --keep run left) and measure it; one row of the report."""
    shape = "metadata-only" if metadata_only else "narrow"
    root = os.path.join(base, f"n{n}-{shape}")
    row: dict[str, Any] = {"rows": n, "shape": shape}
    if os.path.exists(os.path.join(root, VIEW, "_latest_snapshot.json")):
        row |= {"shards": -(-n // SHARD_ROWS), "reused": True}
    else:
        row |= build_view(root, n, metadata_only)
        LOGGER.info(
            "built %d rows in %.1f s, snapshot %.1f s", n, row["build_s"], row["snapshot_s"]
        )
    row["store_mb"] = _store_bytes(root) / 1e6
    for what in ("files", "lookup_1id", "lookup_1id_after_snapshot", "lookup_1k", "index"):
        row.update(_in_fresh_process(root, n, what, repeats))
    row.update(_in_fresh_process(root, n, "requests", 1))
    if not keep:
        files.remove_tree(root)
    return row


def _store_bytes(root: str) -> int:
    return sum(
        os.path.getsize(os.path.join(folder, name))
        for folder, _, names in os.walk(root)
        for name in names
    )


def format_report(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table plus the ratios and budget verdicts."""
    lines = [
        "| view | rows | store MB | files, 1 id (after snapshot) | 1 id cold / warm ms | 1 id "
        "after snapshot ms | 1k ids cold / warm ms (warm CPU) | index() cold / warm ms | "
        "requests 1 id / 1k ids |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        total = {name: sum(counts.values()) for name, counts in row["requests"].items()}
        lines.append(
            f"| {row['shape']} | {row['rows']:,} | {row['store_mb']:,.0f} | {row['files_1id']} "
            f"({row['files_1id_after_snapshot']}) | {row['lookup_1id']['cold_ms']:.0f} / "
            f"{row['lookup_1id']['warm_ms']:.1f} | "
            f"{row['lookup_1id_after_snapshot']['warm_ms']:.1f} | "
            f"{row['lookup_1k']['cold_ms']:.0f} / {row['lookup_1k']['warm_ms']:.0f} "
            f"({row['lookup_1k']['warm_cpu_ms']:.0f}) | "
            f"{row['index']['cold_ms']:.0f} / {row['index']['warm_ms']:.0f} | "
            f"{total['lookup_1id']} / {total['lookup_1k']} |"
        )
    lines.append("")
    for small, large in itertools.pairwise(rows):
        if small["shape"] != large["shape"]:
            continue
        ratios = {
            name: large[name]["warm_ms"] / small[name]["warm_ms"]
            for name in ("lookup_1id", "lookup_1k", "index")
        }
        shown = ", ".join(f"{name} {value:.2f}x" for name, value in ratios.items())
        lines.append(f"{large['rows']:,} vs {small['rows']:,} rows (warm): {shown}")
    lines += [_verdict(row) for row in rows if row["shape"] == "narrow"]
    dropped = all(row[name]["page_cache_dropped"] for row in rows for name in _TIMED)
    lines.append(f"page cache dropped before each cold call: {'yes' if dropped else 'no'}")
    return "\n".join(lines)


_TIMED = ("lookup_1id", "lookup_1id_after_snapshot", "lookup_1k", "index")


def _verdict(row: dict[str, Any]) -> str:
    """Warm 1-id and 1k-id lookups of a narrow row against their budgets."""
    one, many = row["lookup_1id"]["warm_ms"], row["lookup_1k"]["warm_ms"]
    ok = one <= BUDGETS["lookup_1id_ms"] and many <= BUDGETS["lookup_1k_ms"]
    return (
        f"{row['rows']:,} narrow rows: 1 id {one:.1f} ms, {row['lookup_1id']['warm_cpu_ms']:.1f} ms "
        f"CPU (budget {BUDGETS['lookup_1id_ms']:.0f}), "
        f"1k ids {many:.0f} ms, {row['lookup_1k']['warm_cpu_ms']:.0f} ms CPU (budget "
        f"{BUDGETS['lookup_1k_ms']:.0f}): {'met' if ok else 'MISSED'} in wall time"
    )


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the benchmark."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.store_scale", description=__doc__)
    parser.add_argument(
        "--sizes", default="10000,100000", help="row counts of the narrow view, comma-separated"
    )
    parser.add_argument(
        "--metadata-sizes",
        default="1000000",
        help="row counts of the metadata-only view (320 constant values per row), or ''",
    )
    parser.add_argument("--repeats", type=int, default=5, help="warm repetitions (median)")
    parser.add_argument("--root", help="where to build the views (default: a temp dir)")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument(
        "--keep", action="store_true", help="keep the views under --root (a rerun reuses them)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    add_common_arguments(parser)
    return parser


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    if args.child:
        return _child(args)
    base = args.root or tempfile.mkdtemp(prefix="store-scale-")
    sizes = [(int(size), False) for size in args.sizes.split(",") if size]
    sizes += [(int(size), True) for size in args.metadata_sizes.split(",") if size]
    rows = [bench_size(base, size, args.repeats, args.keep, meta) for size, meta in sizes]
    report = format_report(rows)
    print(report)
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if args.out:
        files.atomic_write_text(args.out, json.dumps({"rows": rows, "report": report}, indent=2))
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    return run_cli(_main, argv)


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())


if __name__ == "__main__":
    main()
