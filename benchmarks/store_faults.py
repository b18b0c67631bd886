"""Benchmark: what a flaky object store and the lease fencing cost an extraction on S3."""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import fault_proxy
from benchmarks import object_store_servers as servers
from benchmarks.fault_proxy import NO_FAULTS, FaultMix, FaultProxy
from features import files
from features.cli import add_common_arguments, cli_entry_points, configure_logging, positive_int
from pipelines import extract

LOGGER = logging.getLogger(__name__)
# The fault mix of the tests, scaled to --fault-rate: 503 : 429 : reset before : reset after.
MIX_SHARES = {"unavailable": 5, "throttled": 2, "reset_before": 2.5, "reset_after": 2.5}


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the benchmark."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.store_faults",
        description="Extract the same generated images to moto's S3 on 127.0.0.1 through a "
        "proxy, once forwarding every request and once failing --fault-rate of them; report "
        "wall time and requests per shard by method, and the retries the run counted.",
    )
    parser.add_argument("--images", type=positive_int("--images"), default=48)
    parser.add_argument("--shard-size", type=positive_int("--shard-size"), default=8)
    parser.add_argument("--view", default="mnv3s_mlsp_narrow", help="a predefined view")
    parser.add_argument("--fault-rate", type=float, default=0.12, help="share of failed requests")
    parser.add_argument("--seed", type=int, default=18, help="seed of the fault draws")
    parser.add_argument("--out", default="bench_out/store_faults.json", help="results JSON")
    add_common_arguments(parser)
    return parser


def _manifests(root: Path, count: int) -> tuple[str, str]:
    """Manifests of `count` and of 2 x `count` generated images (the first is a prefix)."""
    from features.download.manifest import build_manifest, entries_from_folder
    from pipelines.sample import write_sample

    write_sample(root, n=2 * count, seed=21, broken=False, min_side=96, max_side=160)
    table = build_manifest(entries_from_folder(root / "images"), "b").sort_by("image_id")
    paths = (str(root / "half.parquet"), str(root / "full.parquet"))
    files.atomic_write_parquet(paths[0], table.slice(0, count))
    files.atomic_write_parquet(paths[1], table)
    return paths


def _run(
    args: argparse.Namespace, manifest: str, store: str, log: servers.RequestLog, folder: Path
) -> dict[str, Any]:
    """One extraction: seconds, requests that reached the server by method, the summary."""
    summary_path = folder / f"summary-{time.monotonic_ns()}.json"
    argv = [
        *("--manifest", manifest, "--store", store, "--view", args.view),
        *("--weights", "random:0", "--shard-size", str(args.shard_size)),
        *("--direct_num_workers", "1", "--summary-json", str(summary_path)),
    ]
    with log.measure() as requests:
        started = time.perf_counter()
        code = extract.run(argv)
        seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"extraction to {store} failed (exit {code})")
    summary = json.loads(summary_path.read_text())
    methods = Counter(method for method, _, _ in requests)
    lease_reads = sum(1 for m, path, _ in requests if m == "GET" and path.endswith("/lease.json"))
    return {
        "seconds": round(seconds, 2),
        "requests": dict(methods),
        "lease_reads": lease_reads,
        "shards": summary["shards_committed_this_run"],
        "store_retries": summary["store_retries"],
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Cold local warm-up, then the fault-free and the faulty run on fresh buckets."""
    moto = servers.start_moto_s3()
    proxy = FaultProxy.start(int(moto.endpoint_url.rsplit(":", 1)[1]))
    try:
        with tempfile.TemporaryDirectory() as temporary, fault_proxy.routed_through({"s3": proxy}):
            folder = Path(temporary)
            manifest, double = _manifests(folder / "sample", args.images)
            started = time.perf_counter()
            extract.run([*_local_argv(args, manifest, folder / "warm")])
            cold = time.perf_counter() - started
            results: dict[str, Any] = {"cold_local_seconds": round(cold, 2)}
            results["fault_free"] = _run(args, manifest, _bucket(moto, "clean"), moto.log, folder)
            results["fault_free_double"] = _run(
                args, double, _bucket(moto, "double"), moto.log, folder
            )
            share = args.fault_rate / sum(MIX_SHARES.values())
            proxy.set_mix(FaultMix(**{k: v * share for k, v in MIX_SHARES.items()}, seed=args.seed))
            results["faulty"] = _run(args, manifest, _bucket(moto, "faulty"), moto.log, folder)
            results["faulty"]["faults_injected"] = dict(proxy.faults)
            proxy.set_mix(NO_FAULTS)
    finally:
        proxy.stop()
        moto.stop()
    return results


def _local_argv(args: argparse.Namespace, manifest: str, store: Path) -> list[str]:
    return [
        *("--manifest", manifest, "--store", str(store), "--view", args.view),
        *("--weights", "random:0", "--shard-size", str(args.shard_size)),
        *("--direct_num_workers", "1"),
    ]


def _bucket(moto: servers.Server, name: str) -> str:
    bucket = servers.new_bucket("s3", moto)
    return bucket.path(name)


def table(results: dict[str, Any], fault_rate: float) -> str:
    """The README's markdown table."""
    rows = ["| run | wall s | shards | requests per shard (by method) | retried | settled |",
            "| --- | ---: | ---: | --- | ---: | ---: |"]  # fmt: skip
    for name, label in (("fault_free", "no faults"), ("faulty", f"{fault_rate:.0%} faults")):
        run = results[name]
        shards = max(run["shards"], 1)
        per_shard = ", ".join(
            f"{method} {count / shards:.1f}" for method, count in sorted(run["requests"].items())
        )
        counts = run["store_retries"]
        retried = sum(v for k, v in counts.items() if k.startswith("retry "))
        settled = sum(v for k, v in counts.items() if k.startswith("ambiguous "))
        rows.append(
            f"| {label} | {run['seconds']:.1f} | {run['shards']} | {per_shard} "
            f"(lease reads {run['lease_reads'] / shards:.2f}) | {retried} | {settled} |"
        )
    small, large = results["fault_free"], results["fault_free_double"]
    added = max(large["shards"] - small["shards"], 1)
    marginal = {
        method: (large["requests"].get(method, 0) - small["requests"].get(method, 0)) / added
        for method in sorted(set(small["requests"]) | set(large["requests"]))
    }
    rows.append(
        f"| no faults, each further shard ({small['shards']} -> {large['shards']} shards) | | | "
        + ", ".join(f"{method} {count:.1f}" for method, count in marginal.items())
        + f" = {sum(marginal.values()):.1f} | | |"
    )
    return "\n".join(rows)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    results = measure(args)
    results["settings"] = {k: v for k, v in vars(args).items() if k != "verbose"}
    files.atomic_write_text(args.out, json.dumps(results, indent=2))
    print(table(results, args.fault_rate))
    print(f"cold local run (model build included): {results['cold_local_seconds']:.1f} s")
    return 0


run, main = cli_entry_points(_main)

if __name__ == "__main__":
    main()
