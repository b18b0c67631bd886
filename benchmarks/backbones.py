"""Benchmark: images/s of each backbone's narrow view on the same AVA-like images, vs IRv2."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from features import files
from features.cli import configure_logging, positive_int
from features.download.manifest import build_manifest, entries_from_folder, read_manifest
from features.extraction.planning import allocate_rows, prepare_views, resolve_specs
from features.extraction.shard import ExtractionConfig, ShardExtractor
from features.model.mlsp import ExtractorKey, get_extractor
from features.store import ViewLease, ensure_store
from pipelines.sample_images import render_image
from schemas.view_spec import PREDEFINED_VIEWS, InputPolicy

LOGGER = logging.getLogger(__name__)
NARROW_VIEWS = (
    "irnv2_mlsp_narrow",
    "iv3_mlsp_narrow",
    "mnv3l_mlsp_narrow",
    "mnv3s_mlsp_narrow",
    "mnasnet_mlsp_narrow",
)
BASELINE = "irnv2_mlsp_narrow"
AVA_SIZES = ((375, 500), (500, 375), (333, 500), (375, 500), (500, 333), (400, 500))


@dataclass
class Timings:
    """Per-round seconds (wall and CPU) of one view over all images."""

    model_wall: list[float]
    model_cpu: list[float]
    shard_wall: list[float]


def write_images(folder: Path, count: int, seed: int) -> list[np.ndarray]:
    """AVA-like JPEGs (about 500x375, both orientations, quality 90); returns decoded arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    decoded = []
    for index in range(count):
        height, width = AVA_SIZES[index % len(AVA_SIZES)]
        pixels = render_image(rng, height, width)[0]
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        (folder / f"{index:06d}.jpg").write_bytes(buffer.getvalue())
        decoded.append(np.asarray(Image.open(buffer).convert("RGB")))
    return decoded


def _extractor(view: str, weights: str) -> Any:
    spec = PREDEFINED_VIEWS[view]
    key = ExtractorKey(weights, spec.taps, ((view, spec.pooling),), backbone=spec.backbone_name)
    return get_extractor(key)


def time_model(view: str, weights: str, decoded: list[np.ndarray]) -> tuple[float, float]:
    """(wall, CPU) seconds of the compiled model over decoded images, one per forward."""
    extractor = _extractor(view, weights)
    wall, cpu = time.perf_counter(), time.process_time()
    for pixels in decoded:
        extractor.extract(pixels[None])
    return time.perf_counter() - wall, time.process_time() - cpu


def time_shards(view: str, weights: str, manifest: str, store: str) -> float:
    """Wall seconds of ShardExtractor.process over every shard of a fresh view (read, decode,
    forward, write, commit), the path every runner's workers take."""
    files.remove_tree(store)
    specs = resolve_specs([view], weights, InputPolicy())
    ensure_store(store)
    allocation = allocate_rows(read_manifest(manifest))
    with ViewLease.acquire_all([files.join(store, view)], "bench") as leases:
        views = prepare_views(store, specs, allocation, 16, "zarr", leases=leases)
        worker = ShardExtractor(ExtractionConfig(store=store, views=(view,), run_id="bench"))
        started = time.perf_counter()
        for shard in views[0].shards():
            worker.process(shard)
        return time.perf_counter() - started


def stored_bytes(store: str, view: str) -> int:
    """Bytes of the view's features on disk (compressed)."""
    root = Path(store) / view
    return sum(path.stat().st_size for path in root.rglob("*") if "features" in str(path))


def _rounds(args: argparse.Namespace, work: Path, decoded: list[np.ndarray]) -> dict[str, Timings]:
    manifest = str(work / "manifest.parquet")
    timings = {view: Timings([], [], []) for view in args.views}
    for view in args.views:  # warm-up: build, load weights, trace
        time_model(view, args.weights, decoded[:1])
    for number in range(args.rounds):
        for view in args.views:  # interleaved: every view sees the same machine load
            wall, cpu = time_model(view, args.weights, decoded)
            timings[view].model_wall.append(wall)
            timings[view].model_cpu.append(cpu)
            store = str(work / f"store_{view}")
            timings[view].shard_wall.append(time_shards(view, args.weights, manifest, store))
        LOGGER.info("round %d done, load %s", number + 1, os.getloadavg())
    return timings


def summarize(timings: dict[str, Timings], images: int, work: Path) -> list[dict[str, Any]]:
    """One row per view: median images/s and the median per-round ratio to the baseline."""
    base = timings[BASELINE]
    rows = []
    for view, timing in timings.items():
        spec = PREDEFINED_VIEWS[view]

        def ratio(mine: list[float], theirs: list[float]) -> float:
            return statistics.median(t / m for m, t in zip(mine, theirs, strict=True))

        rows.append(
            {
                "view": view,
                "backbone": spec.backbone_name,
                "features": int(np.prod(spec.feature_shape)),
                "bytes_per_image_float16": int(np.prod(spec.feature_shape)) * 2,
                "stored_bytes_per_image": stored_bytes(str(work / f"store_{view}"), view) / images,
                "model_images_per_s": images / statistics.median(timing.model_wall),
                "model_ratio": ratio(timing.model_wall, base.model_wall),
                "model_cpu_ratio": ratio(timing.model_cpu, base.model_cpu),
                "shard_images_per_s": images / statistics.median(timing.shard_wall),
                "shard_ratio": ratio(timing.shard_wall, base.shard_wall),
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of summarize()'s rows."""
    lines = [
        "| view | backbone | features | bytes/image (fp16) | stored bytes/image | model img/s | "
        "x IRv2 (wall) | x IRv2 (CPU) | shard path img/s | x IRv2 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['view']} | {r['backbone']} | {r['features']:,} | "
            f"{r['bytes_per_image_float16']:,} | {r['stored_bytes_per_image']:,.0f} | "
            f"{r['model_images_per_s']:.2f} | {r['model_ratio']:.1f} | "
            f"{r['model_cpu_ratio']:.1f} | {r['shard_images_per_s']:.2f} | "
            f"{r['shard_ratio']:.1f} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Arguments."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.backbones", description=__doc__)
    parser.add_argument("--images", type=positive_int("--images"), default=12)
    parser.add_argument("--rounds", type=positive_int("--rounds"), default=3)
    parser.add_argument("--views", nargs="+", default=list(NARROW_VIEWS), choices=NARROW_VIEWS)
    parser.add_argument(
        "--weights",
        default="random:0",
        help="random:SEED (default; speed does not depend on the values) or imagenet",
    )
    parser.add_argument("--json", help="also write the rows and load averages here")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    if BASELINE not in args.views:
        args.views.insert(0, BASELINE)
    with tempfile.TemporaryDirectory(prefix="bench_backbones_") as folder:
        work = Path(folder)
        decoded = write_images(work / "images", args.images, seed=0)
        table_path = str(work / "manifest.parquet")
        files.atomic_write_parquet(
            table_path, build_manifest(entries_from_folder(work / "images"), "bench")
        )
        load_before = os.getloadavg()
        timings = _rounds(args, work, decoded)
        rows = summarize(timings, args.images, work)
    load_after = os.getloadavg()
    print(table(rows))
    print(
        f"{args.images} images x {args.rounds} interleaved rounds, batch 1, {args.weights}; "
        f"load average before {load_before}, after {load_after}; {os.cpu_count()} CPUs"
    )
    if args.json:
        record = {"rows": rows, "load_before": load_before, "load_after": load_after}
        Path(args.json).write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
