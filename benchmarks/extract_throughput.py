"""Benchmark: the extraction CLI as a user runs it vs the bare compiled model, each in a fresh process.

What each side mirrors:

- pipeline: `python -m pipelines.extract --view irnv2_mlsp_narrow --view irnv2_mlsp_wide
  --weights random:0 --shard-size 16` in a new Python process on DirectRunner, as a CLI run.
  End to end: spawn to exit (interpreter and imports, backbone build, weights, tracing, Beam
  start-up, planning, read + sha256 + decode, forward, Zarr writes, commits). Steady state:
  images of the shards committed after the first one, over the time between the first and the
  last shard's commit (from the run's log), so the cold start stays out.
- bare model: a new Python process that builds the same extractor
  (`features.model.mlsp.get_extractor`, random:0, narrow + wide poolings from one pass), loads
  the images already decoded into memory, and forwards them with the pipeline's size batching.
  End to end: spawn to the end of its first pass (interpreter and imports, decode, build,
  tracing, one pass; the process's wall time less the second pass). Steady state: that second
  pass over the same arrays, every shape traced.

Ratios are pipeline / bare for each of the two. Both sides pay their own cold start; nothing
is warmed in the measuring process.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from features import files
from features.cli import configure_logging, positive_int
from features.download.manifest import build_manifest, entries_from_folder
from features.extraction.shard import DEFAULT_MAX_BATCH_PIXELS, _size_batches
from pipelines.sample_images import render_image
from schemas.view_spec import PREDEFINED_VIEWS

NARROW, WIDE = PREDEFINED_VIEWS["irnv2_mlsp_narrow"], PREDEFINED_VIEWS["irnv2_mlsp_wide"]
AVA_SIZES = [(375, 500), (500, 375), (333, 500), (500, 333), (375, 500), (400, 500)]
SHARD_SIZE = 16
# The extraction's per-shard INFO line: "<asctime> INFO ...: shard 3 rows 48:64 committed to".
_COMMIT_LINE = re.compile(r"^(\S+ \S+) INFO \S+: shard \d+ rows (\d+):(\d+) committed to")


def write_ava_like_images(folder: Path, count: int, seed: int) -> None:
    """JPEGs of AVA-like sizes (about 500x375, mixed orientations)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        height, width = AVA_SIZES[index % len(AVA_SIZES)]
        pixels, _, _, _ = render_image(rng, height, width)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        (folder / f"{index:06d}.jpg").write_bytes(buffer.getvalue())


def bare_model_worker(images: Path, max_batch_pixels: int) -> dict[str, float]:
    """In this (fresh) process: decode, build, one traced pass, one timed pass.

    Returns:
        {"first_pass_seconds", "steady_seconds", "build_seconds"}.
    """
    from features.model.mlsp import ExtractorKey, get_extractor

    decoded = [np.asarray(Image.open(path).convert("RGB")) for path in sorted(images.glob("*.jpg"))]
    started = time.perf_counter()
    poolings = ((NARROW.name, NARROW.pooling), (WIDE.name, WIDE.pooling))
    model = get_extractor(ExtractorKey("random:0", NARROW.taps, poolings))
    built = time.perf_counter()
    sizes = {i: image.shape[:2] for i, image in enumerate(decoded)}
    groups = list(_size_batches(sizes, max_batch_pixels, 1))
    passes = []
    for _ in range(2):  # the first pass traces every shape; the second is steady state
        begin = time.perf_counter()
        for group in groups:
            model.extract(np.stack([decoded[i] for i in group]))
        passes.append(time.perf_counter() - begin)
    return {
        "build_seconds": built - started,
        "first_pass_seconds": passes[0],
        "steady_seconds": passes[1],
    }


def run_bare(images: Path, max_batch_pixels: int, result: Path) -> dict[str, float]:
    """The bare model in a fresh process; adds spawn to end of the first pass, in seconds."""
    argv = [sys.executable, "-m", "benchmarks.extract_throughput", "--bare-worker"]
    argv += ["--images-dir", str(images), "--max-batch-pixels", str(max_batch_pixels)]
    started = time.perf_counter()
    subprocess.run([*argv, "--out", str(result)], check=True, capture_output=True)
    measured: dict[str, float] = json.loads(result.read_text())
    process_seconds = time.perf_counter() - started
    return {**measured, "end_to_end_seconds": process_seconds - measured["steady_seconds"]}


def steady_state(log: str) -> tuple[int, float]:
    """(images, seconds) between the first and the last shard commit in an extraction log.

    Raises:
        RuntimeError: fewer than two shard commits were logged.
    """
    commits = []
    for line in log.splitlines():
        match = _COMMIT_LINE.match(line)
        if match:
            stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
            commits.append((stamp, int(match.group(3)) - int(match.group(2))))
    if len(commits) < 2:
        raise RuntimeError(f"{len(commits)} shard commit(s) in the log; use more images")
    commits.sort()
    images = sum(rows for _, rows in commits[1:])
    return images, (commits[-1][0] - commits[0][0]).total_seconds()


def run_pipeline(manifest: str, store: Path, max_batch_pixels: int) -> dict[str, float]:
    """`python -m pipelines.extract` in a fresh process, as a user runs it."""
    files.remove_tree(str(store))
    argv = [sys.executable, "-m", "pipelines.extract", "--manifest", manifest]
    argv += ["--store", str(store), "--view", NARROW.name, "--view", WIDE.name]
    argv += ["--weights", "random:0", "--shard-size", str(SHARD_SIZE)]
    argv += ["--max-batch-pixels", str(max_batch_pixels)]
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"pipeline exited {done.returncode}:\n{done.stderr[-2000:]}")
    images, seconds = steady_state(done.stderr)
    return {"end_to_end_seconds": elapsed, "steady_images": images, "steady_seconds": seconds}


def _rates(n: int, pipeline: list[dict[str, float]], bare: list[dict[str, float]]) -> dict:
    def median(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(run[key] for run in runs)

    pipe_e2e = n / median(pipeline, "end_to_end_seconds")
    pipe_steady = statistics.median(r["steady_images"] / r["steady_seconds"] for r in pipeline)
    bare_e2e, bare_steady = (
        n / median(bare, "end_to_end_seconds"),
        n / median(bare, "steady_seconds"),
    )
    return {
        "pipeline_end_to_end_images_per_s": pipe_e2e,
        "pipeline_steady_images_per_s": pipe_steady,
        "bare_end_to_end_images_per_s": bare_e2e,
        "bare_steady_images_per_s": bare_steady,
        "bare_build_seconds": median(bare, "build_seconds"),
        "bare_first_pass_seconds": median(bare, "first_pass_seconds"),
        "ratio_end_to_end": pipe_e2e / bare_e2e,
        "ratio_steady": pipe_steady / bare_steady,
    }


def measure(images: int, repeats: int, out: Path, max_batch_pixels: int) -> dict[str, Any]:
    """Alternate pipeline and bare runs (drift on a shared machine hits both sides)."""
    write_ava_like_images(out / "images", images, seed=1)
    manifest = str(out / "manifest.parquet")
    files.atomic_write_parquet(
        manifest, build_manifest(entries_from_folder(out / "images"), "bench")
    )
    pipeline, bare = [], []
    for _ in range(repeats):
        pipeline.append(run_pipeline(manifest, out / "store", max_batch_pixels))
        bare.append(run_bare(out / "images", max_batch_pixels, out / "bare.json"))
    return {
        "images": images,
        "repeats": repeats,
        "shard_size": SHARD_SIZE,
        **_rates(images, pipeline, bare),
        "runs": {"pipeline": pipeline, "bare": bare},
    }


def format_table(results: dict[str, Any]) -> str:
    """Markdown table of the results."""
    r = results
    return "\n".join(
        [
            f"Extraction, {r['images']} AVA-like JPEGs (~500x375), narrow + wide, random:0, "
            f"shards of {r['shard_size']}, median of {r['repeats']} alternating rounds, "
            "each side in a fresh process",
            "",
            "| images/s | pipeline (`python -m pipelines.extract`) | bare model | pipeline / bare |",
            "| --- | ---: | ---: | ---: |",
            f"| end to end, cold start included | {r['pipeline_end_to_end_images_per_s']:.3f} | "
            f"{r['bare_end_to_end_images_per_s']:.3f} | {r['ratio_end_to_end']:.3f} |",
            f"| steady state | {r['pipeline_steady_images_per_s']:.3f} | "
            f"{r['bare_steady_images_per_s']:.3f} | {r['ratio_steady']:.3f} |",
            "",
            f"Bare model cold start: build {r['bare_build_seconds']:.1f} s, first (tracing) pass "
            f"{r['bare_first_pass_seconds']:.1f} s.",
        ]
    )


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the benchmark."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.extract_throughput")
    parser.add_argument("--images", type=positive_int("--images"), default=48)
    parser.add_argument("--repeats", type=positive_int("--repeats"), default=3)
    parser.add_argument("--out", type=Path, default=Path("bench_out/extract"))
    parser.add_argument(
        "--max-batch-pixels",
        type=positive_int("--max-batch-pixels"),
        default=DEFAULT_MAX_BATCH_PIXELS,
    )
    parser.add_argument("--bare-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--images-dir", type=Path, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark; print a markdown table and write OUT/results.json."""
    args = build_parser().parse_args(argv)
    if args.bare_worker:  # the fresh process of run_bare: --out is its result file
        args.out.write_text(json.dumps(bare_model_worker(args.images_dir, args.max_batch_pixels)))
        return
    configure_logging()
    logging.getLogger("features").setLevel(logging.WARNING)
    results = measure(args.images, args.repeats, args.out, args.max_batch_pixels)
    print(format_table(results))
    (args.out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
