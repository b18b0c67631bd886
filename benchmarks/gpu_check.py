"""GPU check: on an NVIDIA GPU host, install CUDA TensorFlow if needed, then measure IRv2 there."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.extract_throughput import steady_state, write_ava_like_images
from features import files
from features.cli import add_common_arguments, cli_entry_points, configure_logging, positive_int
from features.model.devices import BATCH_PIXELS_BY_KIND
from schemas.errors import DeviceUnavailableError

BUDGET_SECONDS = 8 * 60  # the whole check, installation included
_SEES_GPU = "import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))"


def gpu_names() -> list[str]:
    """The NVIDIA GPUs `nvidia-smi -L` lists ([] without the tool or a GPU)."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return []
    listed = subprocess.run([tool, "-L"], capture_output=True, text=True, check=False)
    return [line for line in listed.stdout.splitlines() if line.startswith("GPU ")]


def _tensorflow_gpus() -> int:
    done = subprocess.run([sys.executable, "-c", _SEES_GPU], capture_output=True, text=True)
    return int(done.stdout.strip() or 0) if done.returncode == 0 else 0


def _install_cuda_tensorflow() -> None:
    """CUDA TensorFlow of the installed version, in place of tensorflow-cpu."""
    try:
        version = importlib.metadata.version("tensorflow-cpu")
        subprocess.run(
            [sys.executable, "-m", "pip", "uninstall", "-y", "tensorflow-cpu"], check=True
        )
    except importlib.metadata.PackageNotFoundError:
        version = importlib.metadata.version("tensorflow")
    pin = f"tensorflow[and-cuda]=={version}"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", pin], check=True)


def ensure_gpu(install: bool) -> list[str]:
    """The GPUs to measure on, installing CUDA TensorFlow once if TensorFlow sees none.

    Raises:
        DeviceUnavailableError: no NVIDIA GPU, or TensorFlow cannot use it (one line).
    """
    names = gpu_names()
    if not names:
        raise DeviceUnavailableError(
            "gpu_check: no NVIDIA GPU on this machine (nvidia-smi lists none); run it on a "
            "host with an NVIDIA GPU"
        )
    if _tensorflow_gpus() == 0 and install:
        _install_cuda_tensorflow()
    if _tensorflow_gpus() == 0:
        raise DeviceUnavailableError(
            f"gpu_check: {names[0]} is present but TensorFlow sees no GPU"
            + ("" if install else " (rerun without --no-install to install tensorflow[and-cuda])")
        )
    return names


def _timed(argv: list[str], deadline: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=max(1.0, deadline - time.monotonic())
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return done


def measure(args: argparse.Namespace, work: Path, deadline: float) -> dict[str, Any]:
    """Bare model, shard path and decode feed on this GPU, each in a fresh process."""
    images = work / "images"
    write_ava_like_images(images, args.images, seed=5)
    pixels = BATCH_PIXELS_BY_KIND["gpu"]
    bare_out = work / "bare.json"
    _timed([sys.executable, "-m", "benchmarks.extract_throughput", "--bare-worker",
            "--images-dir", str(images), "--max-batch-pixels", str(pixels),
            "--out", str(bare_out)], deadline)  # fmt: skip
    bare = json.loads(bare_out.read_text())
    manifest = work / "manifest.parquet"
    _timed([sys.executable, "-m", "pipelines.manifest", "--images", str(images),
            "--out", str(manifest)], deadline)  # fmt: skip
    threads = max(1, (os.cpu_count() or 2) - 1)
    run = _timed([sys.executable, "-m", "pipelines.extract", "--manifest", str(manifest),
                  "--store", str(work / "store"), "--view", "irnv2_mlsp_narrow",
                  "--view", "irnv2_mlsp_wide", "--weights", "random:0", "--device", "gpu",
                  "--shard-size", "64", "--decode-threads", str(threads)], deadline)  # fmt: skip
    steady_images, steady_seconds = steady_state(run.stderr)
    feed_out = work / "gpu_feed.json"
    _timed([sys.executable, "-m", "benchmarks.gpu_feed", "--images", str(args.images),
            "--repeats", "3", "--out", str(work / "feed"), "--json", str(feed_out)], deadline)  # fmt: skip
    return {
        "bare_model_images_per_second": round(args.images / bare["steady_seconds"], 1),
        "shard_path_images_per_second": round(steady_images / steady_seconds, 1),
        "decode_threads": threads,
        "batch_pixels": pixels,
        "gpu_feed": json.loads(feed_out.read_text()),
    }


def table(result: dict[str, Any]) -> str:
    """The README's table."""
    return "\n".join([
        f"GPU: {result['gpus'][0]}",
        "| measure | images/s |",
        "| --- | ---: |",
        f"| bare IRv2 narrow+wide model, batches of {result['batch_pixels']:,} px | "
        f"{result['bare_model_images_per_second']} |",
        f"| shard path, {result['decode_threads']} decode threads | "
        f"{result['shard_path_images_per_second']} |",
    ])  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the check."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__)
    parser.add_argument("--images", type=positive_int("--images"), default=256)
    parser.add_argument("--out", default="bench_out/gpu_check", help="folder of results.json")
    parser.add_argument("--no-install", action="store_true", help="never pip-install anything")
    add_common_arguments(parser)
    return parser


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    deadline = time.monotonic() + BUDGET_SECONDS
    gpus = ensure_gpu(install=not args.no_install)
    with tempfile.TemporaryDirectory() as work:
        result = {"gpus": gpus, **measure(args, Path(work), deadline)}
    files.atomic_write_text(files.join(args.out, "results.json"), json.dumps(result, indent=2))
    print(table(result))
    return 0


run, main = cli_entry_points(_main)

if __name__ == "__main__":
    main()
