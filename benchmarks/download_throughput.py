"""Benchmark: download images/s and MB/s from a local HTTP server at several pool sizes."""

from __future__ import annotations

import argparse
import io
import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.fault_server import FaultServer, Route
from features.cli import add_common_arguments, cli_entry_points, configure_logging, positive_int
from features.download.fetch import FetchConfig
from features.download.items import DownloadItem, process_shard

LOGGER = logging.getLogger(__name__)


def make_jpegs(n: int, side: int, seed: int) -> list[bytes]:
    """n distinct JPEGs (smooth gradients plus noise, about 10-20 KB at 256 px)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:side, 0:side].astype(np.float32) / side
    images = []
    for _ in range(n):
        colour = rng.uniform(0, 1, 3).astype(np.float32)
        pixels = (rows[..., None] * colour + cols[..., None] * (1 - colour)) * 200
        pixels += rng.normal(0, 12, (side, side, 1)).astype(np.float32)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=85)
        images.append(buffer.getvalue())
    return images


def measure(
    server: FaultServer, names: list[str], workers: int, folder: Path
) -> tuple[float, int, Counter[str]]:
    """(seconds, bytes, status counts) of one full download into a fresh folder."""
    items = [DownloadItem(name, server.url(f"{name}.jpg"), f"{name}.jpg") for name in names]
    config = FetchConfig(timeout=10, retries=1, backoff=0.05)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.perf_counter()
    records = process_shard(items, folder, config, workers)
    elapsed = time.perf_counter() - started
    shutil.rmtree(folder)
    return elapsed, sum(row["bytes"] or 0 for row in records), Counter(r["status"] for r in records)


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the benchmark."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.download_throughput",
        description="Download throughput against 127.0.0.1.",
    )
    parser.add_argument("--n", type=positive_int("--n"), default=2000, help="images (2000)")
    parser.add_argument("--side", type=positive_int("--side"), default=256, help="px (256)")
    parser.add_argument(
        "--workers", default="1,4,16,32", help="comma-separated pool sizes (default 1,4,16,32)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench_out/download"),
        help="results.json, table.md and the scratch downloads go here",
    )
    add_common_arguments(parser)
    return parser


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        pools = [int(part) for part in args.workers.split(",")]
    except ValueError:
        parser.error(f"argument --workers: expected integers, got {args.workers!r}")
    if min(pools) < 1:
        parser.error("argument --workers: pool sizes must be >= 1")
    bodies = make_jpegs(args.n, args.side, seed=0)
    names = [f"{index:06d}" for index in range(args.n)]
    lines = [
        f"{args.n} JPEGs of {args.side}x{args.side} px, mean "
        f"{np.mean([len(b) for b in bodies]) / 1024:.1f} KiB, served from 127.0.0.1",
        "",
        "| workers | seconds | images/s | MB/s | statuses |",
        "|---:|---:|---:|---:|---|",
    ]
    with FaultServer() as server:
        for name, body in zip(names, bodies, strict=True):
            server.routes[f"{name}.jpg"] = Route(body)
        results = []
        for workers in pools:
            elapsed, size, statuses = measure(server, names, workers, args.out / "scratch")
            results.append(
                {"workers": workers, "seconds": elapsed, "bytes": size, "statuses": statuses}
            )
            lines.append(
                f"| {workers} | {elapsed:.2f} | {args.n / elapsed:.0f} | "
                f"{size / elapsed / 1e6:.1f} | {dict(statuses)} |"
            )
    (args.out / "results.json").write_text(json.dumps({"images": args.n, "runs": results}))
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


run, main = cli_entry_points(_main)


if __name__ == "__main__":
    main()
