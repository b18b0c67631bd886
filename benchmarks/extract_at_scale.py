"""Benchmark: our pipeline vs the seed's extraction style on train8 variants; bytes and RSS vs N."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.extract_throughput import write_ava_like_images
from benchmarks.seed_style_extraction import build_seed_model, extract_seed_style
from features import files
from features.cli import configure_logging, positive_int
from features.download.manifest import build_manifest, entries_from_folder
from features.extraction.variants import VARIANT_SETS
from schemas.view_spec import PREDEFINED_VIEWS

NARROW, WIDE = PREDEFINED_VIEWS["irnv2_mlsp_narrow"], PREDEFINED_VIEWS["irnv2_mlsp_wide"]
TRAIN8 = VARIANT_SETS["train8"]


def _folder_bytes(path: Path) -> int:
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )


def codec_label(store: Path, view: str) -> str:
    """The compression a view in the store records, e.g. 'Blosc lz4-5 bitshuffle'."""
    from features.store import COMPRESSIONS, FeatureView

    compression = FeatureView(str(store), view).compression
    blosc = COMPRESSIONS.get(compression)
    return f"Blosc {blosc.cname}-{blosc.clevel} {blosc.shuffle}" if blosc else compression


def _pipeline_argv(manifest: Path, store: Path, views: Sequence[str]) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "pipelines.extract",
        "--manifest",
        str(manifest),
        "--store",
        str(store),
        "--weights",
        "random:0",
        "--variants",
        "train8",
        "--shard-size",
        "8",
    ]
    for view in views:
        argv += ["--view", view, "--view-name", f"{view}_train8"]
    return argv


def run_pipeline(manifest: Path, store: Path, views: Sequence[str]) -> float:
    """Seconds of the extraction run (the run summary's wall time: Beam start-up, reading,
    decoding, forward passes, writes and commits; like the baseline, not the model build)."""
    files.remove_tree(str(store))
    summary = store.parent / f"{store.name}-summary.json"
    subprocess.run(
        [*_pipeline_argv(manifest, store, views), "--summary-json", str(summary)],
        check=True,
        capture_output=True,
    )
    return float(json.loads(summary.read_text())["wall_seconds"])


def run_seed(images: list[Path], out: Path, poolings: Sequence[str]) -> float:
    """Seconds of the seed-style baseline: one model (and pass) per view, as the seed code does."""
    total = 0.0
    out.mkdir(parents=True, exist_ok=True)
    for view in poolings:
        model = build_seed_model("random:0", PREDEFINED_VIEWS[view].pooling)
        model.predict(np.zeros((1, 300, 400, 3), "float32"), verbose=0)  # warm-up
        started = time.perf_counter()
        extract_seed_style(model, images, TRAIN8, out / f"{view}.h5")
        total += time.perf_counter() - started
    return total


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    out = args.out
    write_ava_like_images(out / "images", args.images * 4, seed=3)
    images = sorted((out / "images").glob("*.jpg"))
    small, large = images[: args.images], images
    results: dict[str, Any] = {"images": args.images}
    for label, subset in (("n", small), ("4n", large)):
        folder = out / f"subset-{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for path in subset:
            target = folder / path.name
            if not target.is_symlink():
                target.symlink_to(path.resolve())
        files.atomic_write_parquet(
            str(out / f"manifest-{label}.parquet"),
            build_manifest(entries_from_folder(folder), "bench"),
        )
    for label, views in (("narrow", [NARROW.name]), ("both", [NARROW.name, WIDE.name])):
        seconds = run_pipeline(out / "manifest-n.parquet", out / f"store-{label}", views)
        seed_seconds = run_seed(small, out / f"seed-{label}", views)
        results[f"{label}_pipeline_images_per_s"] = args.images / seconds
        results[f"{label}_seed_images_per_s"] = args.images / seed_seconds
        results[f"{label}_ratio"] = seed_seconds / seconds
    rows_variants = args.images * len(TRAIN8)
    for view in (NARROW.name, WIDE.name):
        results[f"{view}_codec"] = codec_label(out / "store-both", f"{view}_train8")
        results[f"{view}_store_bytes_per_image_variant"] = (
            _folder_bytes(out / "store-both" / f"{view}_train8" / "features.zarr") / rows_variants
        )
        results[f"{view}_seed_bytes_per_image_variant"] = (
            _folder_bytes(out / "seed-both") / rows_variants if view == WIDE.name else 0
        )
    results["seed_both_file_bytes_per_image_variant"] = (
        _folder_bytes(out / "seed-both") / rows_variants
    )
    return results


def _rss(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Peak RSS of separate pipeline processes for N and 4N images (narrow + wide, train8)."""
    for label in ("n", "4n"):
        argv = _pipeline_argv(
            args.out / f"manifest-{label}.parquet",
            args.out / f"rss-{label}",
            [NARROW.name, WIDE.name],
        )
        files.remove_tree(str(args.out / f"rss-{label}"))
        code = (
            "import resource, runpy, sys; sys.argv = "
            + repr(["pipelines.extract", *argv[3:]])
            + "\ntry:\n    runpy.run_module('pipelines.extract', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
        )
        output = subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True
        ).stdout
        results[f"peak_rss_mib_{label}"] = float(output.strip().splitlines()[-1])


def format_table(results: dict[str, Any]) -> str:
    """Markdown table."""
    n = int(results["images"])
    return "\n".join(
        [
            f"train8 variants, {n} AVA-like JPEGs (~500x375), random:0 weights, 2-core CPU",
            "",
            "| views | this pipeline (images/s) | seed style (images/s) | ratio |",
            "| --- | ---: | ---: | ---: |",
            f"| narrow | {results['narrow_pipeline_images_per_s']:.3f} | {results['narrow_seed_images_per_s']:.3f} | {results['narrow_ratio']:.2f}x |",
            f"| narrow + wide | {results['both_pipeline_images_per_s']:.3f} | {results['both_seed_images_per_s']:.3f} | {results['both_ratio']:.2f}x |",
            "",
            "| storage per image per variant | bytes |",
            "| --- | ---: |",
            f"| narrow, Zarr ({results['irnv2_mlsp_narrow_codec']}) | {results['irnv2_mlsp_narrow_store_bytes_per_image_variant']:,.0f} |",
            f"| wide, Zarr ({results['irnv2_mlsp_wide_codec']}) | {results['irnv2_mlsp_wide_store_bytes_per_image_variant']:,.0f} |",
            f"| seed style, narrow + wide HDF5 datasets | {results['seed_both_file_bytes_per_image_variant']:,.0f} |",
            "",
            "| peak RSS (narrow + wide, train8) | MiB |",
            "| --- | ---: |",
            f"| N = {n} images | {results['peak_rss_mib_n']:.0f} |",
            f"| 4N = {4 * n} images | {results['peak_rss_mib_4n']:.0f} |",
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark, print the tables and write results.json."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.extract_at_scale", description=__doc__
    )
    parser.add_argument(
        "--images", type=positive_int("--images"), default=6, help="N (RSS also runs 4N)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench_out/at_scale"))
    args = parser.parse_args(argv)
    configure_logging()
    logging.getLogger("features").setLevel(logging.WARNING)
    results = _measure(args)
    _rss(args, results)
    print(format_table(results))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
