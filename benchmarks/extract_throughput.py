"""Benchmark: full extraction pipeline (DirectRunner, narrow+wide) vs the bare compiled model."""

from __future__ import annotations

import argparse
import io
import json
import logging
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from features import files
from features.cli import configure_logging, positive_int
from features.download.manifest import build_manifest, entries_from_folder
from features.extraction.feed import plan_batches
from features.extraction.shard import DEFAULT_MAX_BATCH_PIXELS
from features.model.mlsp import ExtractorKey, get_extractor
from pipelines import extract
from pipelines.sample import _render
from schemas.view_spec import PREDEFINED_VIEWS

NARROW, WIDE = PREDEFINED_VIEWS["irnv2_mlsp_narrow"], PREDEFINED_VIEWS["irnv2_mlsp_wide"]
AVA_SIZES = [(375, 500), (500, 375), (333, 500), (500, 333), (375, 500), (400, 500)]


def write_ava_like_images(folder: Path, count: int, seed: int) -> list[np.ndarray]:
    """JPEGs of AVA-like sizes (about 500x375, mixed orientations); returns the decoded arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    decoded = []
    for index in range(count):
        height, width = AVA_SIZES[index % len(AVA_SIZES)]
        pixels, _, _, _ = _render(rng, height, width)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        (folder / f"{index:06d}.jpg").write_bytes(buffer.getvalue())
        decoded.append(np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")))
    return decoded


def time_bare_model(decoded: list[np.ndarray], max_batch_pixels: int, batched: bool) -> float:
    """Seconds for the bare compiled model over already-decoded arrays (same poolings)."""
    model = get_extractor(
        ExtractorKey(
            "random:0", NARROW.taps, ((NARROW.name, NARROW.pooling), (WIDE.name, WIDE.pooling))
        )
    )
    sizes = [(int(image.shape[0]), int(image.shape[1])) for image in decoded]
    groups = (
        plan_batches(sizes, max_batch_pixels, 1)
        if batched
        else [[i] for i in range(len(decoded))]
    )
    started = time.perf_counter()
    for group in groups:
        model.extract(np.stack([decoded[i] for i in group]))
    return time.perf_counter() - started


def time_pipeline(manifest: str, store: str, max_batch_pixels: int) -> float:
    """Seconds for the whole CLI run on DirectRunner (plan, read, decode, forward, write, commit)."""
    files.remove_tree(store)
    started = time.perf_counter()
    code = extract.run(
        [
            "--manifest",
            manifest,
            "--store",
            store,
            "--view",
            NARROW.name,
            "--view",
            WIDE.name,
            "--weights",
            "random:0",
            "--shard-size",
            "16",
            "--max-batch-pixels",
            str(max_batch_pixels),
        ]
    )
    elapsed = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"pipeline failed with exit code {code}")
    return elapsed


def _main(argv: Sequence[str] | None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.extract_throughput", description=__doc__
    )
    parser.add_argument("--images", type=positive_int("--images"), default=32)
    parser.add_argument("--out", type=Path, default=Path("bench_out/extract"))
    parser.add_argument("--repeats", type=positive_int("--repeats"), default=3)
    parser.add_argument(
        "--max-batch-pixels",
        type=positive_int("--max-batch-pixels"),
        default=DEFAULT_MAX_BATCH_PIXELS,
    )
    args = parser.parse_args(argv)
    configure_logging()
    logging.getLogger("features").setLevel(logging.WARNING)
    logging.getLogger("pipelines").setLevel(logging.WARNING)
    decoded = write_ava_like_images(args.out / "images", args.images, seed=1)
    manifest = str(args.out / "manifest.parquet")
    files.atomic_write_parquet(
        manifest, build_manifest(entries_from_folder(args.out / "images"), "bench")
    )
    time_bare_model(decoded[:2], args.max_batch_pixels, batched=False)  # build + trace once
    bare_runs, pipeline_runs = [], []
    for _ in range(args.repeats):  # alternate, so drift on a shared machine hits both sides
        bare_runs.append(time_bare_model(decoded, args.max_batch_pixels, batched=True))
        pipeline_runs.append(
            time_pipeline(manifest, str(args.out / "store"), args.max_batch_pixels)
        )
    bare, pipeline = statistics.median(bare_runs), statistics.median(pipeline_runs)
    n = args.images
    results = {
        "images": n,
        "repeats": args.repeats,
        "pipeline_images_per_s": n / pipeline,
        "bare_images_per_s": n / bare,
        "ratio_pipeline_vs_bare": bare / pipeline,
        "ratio_per_round": [b / p for b, p in zip(bare_runs, pipeline_runs, strict=True)],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    return results


def format_table(results: dict[str, Any]) -> str:
    """Markdown table of the results."""
    rounds = ", ".join(f"{ratio:.3f}" for ratio in results["ratio_per_round"])
    return "\n".join(
        [
            f"Extraction throughput, {int(results['images'])} AVA-like JPEGs (~500x375), narrow + "
            f"wide, random:0 weights, 2-core CPU, median of {results['repeats']} alternating rounds",
            "",
            "| measurement | images/s |",
            "| --- | ---: |",
            "| full pipeline (DirectRunner: plan, read, decode, forward, Zarr write, commit) | "
            f"{results['pipeline_images_per_s']:.3f} |",
            "| bare compiled model on decoded arrays (same batching) | "
            f"{results['bare_images_per_s']:.3f} |",
            f"| **ratio pipeline / bare** | **{results['ratio_pipeline_vs_bare']:.3f}** |",
            f"| ratio per round | {rounds} |",
            f"| peak RSS of the whole run | {results['peak_rss_mib']:.0f} MiB |",
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark, print a markdown table and write results.json."""
    results = _main(argv)
    table = format_table(results)
    print(table)
    out = Path("bench_out/extract")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
