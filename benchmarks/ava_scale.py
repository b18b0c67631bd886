"""Benchmark: the whole chain at AVA scale (255,530 rows) and at a tenth of it, stage by stage.

Each stage is its CLI run as a user runs it (`python -m ...` in a fresh process, cold start
included): manifest, labels, extract (shards of 64, then of 1024 killed by SIGKILL at about half
and re-run), snapshot, verify, verify --deep, query, one training epoch, evaluate. Per stage:
wall and CPU seconds, peak RSS (the stage's process tree: each process's VmHWM, and its own maxrss), files
written, and with --store s3 the requests moto's S3 server on 127.0.0.1 received by method.
Ratios compare each stage at the largest N with the smallest; budgets are checked in the table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import ava_chain
from benchmarks.ava_chain import ChainContext
from benchmarks.ava_dataset import write_ava_dataset
from features import files
from features.cli import add_common_arguments, cli_entry_points, configure_logging

LOGGER = logging.getLogger(__name__)
AVA_ROWS = 255_530
BUDGETS = {
    "stage_ratio_per_10x": 10.5,  # each stage's time at 10x rows, at most
    "rss_ratio": 1.2,  # each stage's peak RSS at 10x rows, at most
    "chain_seconds": 20 * 60,  # the whole chain at 255,530 rows, local
    "bookkeeping_ms_per_image": 0.3,  # shard path minus read+decode, stand-in model
    "requests_per_shard_written": 5.0,
    "verify_requests_per_shard": 2.0,
    "verify_deep_requests_per_shard": 3.0,
}


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the benchmark."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ava_scale",
        description="Run the chain (manifest, labels, extract at shards of 64 and 1024 with a "
        "SIGKILL and resume, snapshot, verify, query, a training epoch, evaluate) on generated "
        "AVA-shaped datasets, each stage as its CLI in a fresh process; report wall, CPU, peak "
        "RSS and files or object-store requests per stage, ratios between sizes and budgets.",
    )
    parser.add_argument(
        "--images",
        default=f"{AVA_ROWS // 10},{AVA_ROWS}",
        help="comma-separated dataset sizes; ratios compare the last with the first "
        f"(default {AVA_ROWS // 10},{AVA_ROWS})",
    )
    parser.add_argument(
        "--s3-images",
        type=int,
        default=AVA_ROWS // 10,
        help="then the same chain with the stores on moto's S3 server on 127.0.0.1 at this "
        f"size, counting requests by method (default {AVA_ROWS // 10}; 0 skips it)",
    )
    parser.add_argument("--work", type=Path, help="working folder (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed")
    parser.add_argument(
        "--malformed-lines",
        type=int,
        default=3,
        help="AVA.txt lines written malformed (labels drops them, naming each; default 3)",
    )
    parser.add_argument("--out", default="bench_out/ava_scale.json", help="results JSON")
    add_common_arguments(parser)
    return parser


def _sizes(text: str, parser: argparse.ArgumentParser) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        parser.error(f"--images: comma-separated integers expected, got {text!r}")
    if not sizes or min(sizes) < 2048:
        parser.error(
            f"--images: sizes of at least 2048 expected (two 1024-row shards), got {text!r}"
        )
    return sizes


def measure_size(
    count: int, work: Path, site: ava_chain.StoreSite, seed: int, malformed: int
) -> dict[str, Any]:
    """Generate a dataset of `count` images and run the chain on it; returns its record."""
    folder = work / f"{'s3-' if site.base else ''}n{count}"
    started = time.perf_counter()
    dataset = write_ava_dataset(folder / "dataset", count, seed=seed, malformed=malformed)
    # A user's dataset is on disk already: without this, the kernel's write-back of the
    # images just generated (500 MB at 255,530) competes with the manifest stage's reads.
    os.sync()
    generated = time.perf_counter() - started
    context = ChainContext(folder, dataset, site)
    stages = ava_chain.run_chain(context)
    return {
        "images": count,
        "generate_seconds": round(generated, 1),
        "stages": stages,
        "chain_seconds": round(sum(stage["wall_s"] for stage in stages.values()), 1),
        "bookkeeping": ava_chain.bookkeeping(dataset, folder / "bookkeeping"),
    }


def ratios(small: dict[str, Any], large: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per stage: wall, CPU and peak-RSS ratio of the large run to the small one."""
    result = {}
    for name, stage in large["stages"].items():
        base = small["stages"].get(name)
        if base is None:
            continue
        result[name] = {
            key: round(stage[key] / max(base[key], 1e-9), 2)
            for key in ("wall_s", "cpu_s", "peak_rss_mb")
        }
    return result


def check_budgets(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each budget with the measured figure and whether it holds."""
    checks: dict[str, Any] = {}
    local = runs.get("local")
    if local is not None:
        checks.update(_scaling_checks(local))
    for site, record in runs.items():
        for size in record["sizes"]:
            checks.update(_size_checks(site, size))
    return {name: {"measured": value, "met": met} for name, (value, met) in checks.items()}


def _scaling_checks(record: dict[str, Any]) -> dict[str, tuple[float, bool]]:
    sizes = record["sizes"]
    small, large = sizes[0], sizes[-1]
    scale = large["images"] / small["images"]
    allowed_time = BUDGETS["stage_ratio_per_10x"] * scale / 10
    checks: dict[str, tuple[float, bool]] = {}
    for name, ratio in record.get("ratios", {}).items():
        checks[f"{name}: time ratio <= {allowed_time:.2f}"] = (
            ratio["wall_s"],
            ratio["wall_s"] <= allowed_time,
        )
        checks[f"{name}: RSS ratio <= {BUDGETS['rss_ratio']}"] = (
            ratio["peak_rss_mb"],
            ratio["peak_rss_mb"] <= BUDGETS["rss_ratio"],
        )
    if large["images"] >= AVA_ROWS:
        seconds = large["chain_seconds"]
        checks["chain at 255,530 rows <= 1200 s"] = (seconds, seconds <= BUDGETS["chain_seconds"])
    return checks


def _size_checks(site: str, size: dict[str, Any]) -> dict[str, tuple[float, bool]]:
    where = f"{site} {size['images']:,}"
    per_image = size["bookkeeping"]["bookkeeping_ms_per_image"]
    checks = {
        f"bookkeeping ({where}) <= 0.3 ms/image": (
            per_image,
            per_image <= BUDGETS["bookkeeping_ms_per_image"],
        )
    }
    for name, key in ava_chain.REQUEST_BUDGETS.items():
        stage = size["stages"].get(name, {})
        figure = stage.get("requests_per_further_shard", stage.get("requests_per_shard"))
        if figure is not None:
            what = "per further shard" if "requests_per_further_shard" in stage else "per shard"
            checks[f"{name} ({where}): requests {what} <= {BUDGETS[key]}"] = (
                figure,
                figure <= BUDGETS[key],
            )
    return checks


def table(record: dict[str, Any], unit: str) -> str:
    """The README's markdown table of one site: a row per stage, a column per size."""
    sizes = record["sizes"]
    header = "| stage | " + " | ".join(
        f"{size['images']:,}: wall s / CPU s / RSS MB / {unit}" for size in sizes
    )
    rows = [header + " | ratio (wall, RSS) |", "| --- |" + " ---: |" * (len(sizes) + 1)]
    for name in sizes[-1]["stages"]:
        cells = []
        for size in sizes:
            stage = size["stages"].get(name)
            cells.append("" if stage is None else _cell(stage))
        ratio = record.get("ratios", {}).get(name)
        ratio_cell = "" if ratio is None else f"{ratio['wall_s']:.2f}x, {ratio['peak_rss_mb']:.2f}x"
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {ratio_cell} |")
    totals = " | ".join(f"{size['chain_seconds']:.0f} s" for size in sizes)
    rows.append(f"| **whole chain** | {totals} | |")
    return "\n".join(rows)


def _cell(stage: dict[str, Any]) -> str:
    written = stage.get("requests_text") or f"{stage.get('files_written', 0):,}"
    if "requests_per_further_shard" in stage:
        written += f" ({stage['requests_per_further_shard']} per further shard)"
    elif "requests_per_shard" in stage:
        written += f" ({stage['requests_per_shard']} per shard)"
    return f"{stage['wall_s']:.1f} / {stage['cpu_s']:.1f} / {stage['peak_rss_mb']:.0f} / {written}"


def _run_site(kind: str, sizes: list[int], work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The chain at each size with the stores on one site; the ratios of last to first."""
    record: dict[str, Any] = {"sizes": []}
    with ava_chain.object_store(kind) as site:
        for count in sizes:
            LOGGER.info("chain at %d images (%s store)", count, kind)
            record["sizes"].append(measure_size(count, work, site, args.seed, args.malformed_lines))
            for leftover in work.glob(f"*n{count}/dataset/images"):
                shutil.rmtree(leftover, ignore_errors=True)  # 255k files: keep the disk free
    if len(sizes) > 1:
        record["ratios"] = ratios(record["sizes"][0], record["sizes"][-1])
    return record


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    sizes = _sizes(args.images, parser)
    if args.s3_images and args.s3_images < 2048:
        parser.error("--s3-images: at least 2048 (two 1024-row shards), or 0 to skip")
    configure_logging(args.verbose)
    work = args.work or Path(tempfile.mkdtemp(prefix="ava-scale-"))
    settings = {k: v for k, v in vars(args).items() if k not in ("verbose", "work", "out")}
    results: dict[str, Any] = {
        "settings": {**settings, "images": sizes, "work": str(work)},
        "machine": {"cpus": os.cpu_count(), "load_average_start": os.getloadavg()},
        "runs": {},
    }
    try:
        results["runs"]["local"] = _run_site("local", sizes, work, args)
        if args.s3_images:
            results["runs"]["s3"] = _run_site("s3", [args.s3_images], work, args)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    results["machine"]["load_average_end"] = os.getloadavg()
    results["budgets"] = check_budgets(results["runs"])
    files.atomic_write_text(args.out, json.dumps(results, indent=2, default=str))
    for site, record in results["runs"].items():
        print(f"\n{site} store:\n" + table(record, "requests" if site == "s3" else "files"))
    for name, check in results["budgets"].items():
        print(f"{'met   ' if check['met'] else 'MISSED'} {name}: {check['measured']}")
    return 0 if all(check["met"] for check in results["budgets"].values()) else 1


run, main = cli_entry_points(_main)

if __name__ == "__main__":
    main()
    sys.exit(0)
