"""The stages benchmarks.ava_scale runs, each as its CLI in a fresh process, and their measurement."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import object_store_servers as servers
from benchmarks import stage_probe
from benchmarks.ava_dataset import AvaDataset

VIEW = "mnv3s_mlsp_narrow"  # the cheapest real backbone: the chain's costs, not the model's
KILL_SHARE = 0.5  # the second extraction is killed once this share of its shards committed
# Stage -> the budget (benchmarks.ava_scale.BUDGETS) its requests per shard are held to: all
# the run's requests over the shards it wrote (fixed costs included), and for verify the
# requests of each further shard (the view in shards of 64 against the same rows in 1024).
REQUEST_BUDGETS = {
    "extract, shards of 64": "requests_per_shard_written",
    "verify": "verify_requests_per_shard",
    "verify --deep": "verify_deep_requests_per_shard",
}


@dataclass
class StoreSite:
    """Where the feature stores live: a local folder (base None) or a bucket on moto's S3."""

    base: str | None = None
    log: servers.RequestLog | None = None
    environment: dict[str, str] = field(default_factory=dict)

    def store(self, folder: Path, name: str) -> str:
        """A store location for one size's run."""
        if self.base is None:
            return str(folder / name)
        return f"{self.base}/{folder.name}/{name}"


@contextlib.contextmanager
def object_store(kind: str) -> Iterator[StoreSite]:
    """A local site, or moto's S3 server on 127.0.0.1 with a fresh bucket (stopped after)."""
    if kind == "local":
        yield StoreSite()
        return
    moto = servers.start_moto_s3()
    try:
        bucket = servers.new_bucket("s3", moto)
        yield StoreSite(bucket.url, moto.log, servers.subprocess_environment({"s3": moto}))
    finally:
        moto.stop()


@dataclass
class ChainContext:
    """One size's working folder, dataset and store site."""

    folder: Path
    dataset: AvaDataset
    site: StoreSite

    @property
    def manifest(self) -> str:
        return str(self.folder / "manifest.parquet")

    @property
    def labels(self) -> str:
        return str(self.folder / "labels.parquet")

    def store(self, shard_rows: int) -> str:
        return self.site.store(self.folder, f"store{shard_rows}")

    def extract_argv(self, shard_rows: int, tag: str) -> list[str]:
        return [
            "pipelines.extract",
            *("--manifest", self.manifest, "--store", self.store(shard_rows), "--view", VIEW),
            *("--weights", "random:0", "--shard-size", str(shard_rows)),
            *("--summary-json", str(self.folder / f"summary-{tag}.json")),
        ]


def run_stage(
    context: ChainContext,
    name: str,
    command: list[str],
    kill_when: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """One stage as a fresh process: its measurements, files written and requests."""
    before_files = _file_count(context.folder)
    cpu_before = stage_probe.children_cpu_seconds()
    probe = stage_probe.StageProbe(command, context.site.environment, context.folder / "stages.log")
    log = context.site.log
    measuring: contextlib.AbstractContextManager[list[tuple[str, str, str]]] = (
        log.measure() if log is not None else contextlib.nullcontext([])
    )
    with measuring as requests:
        record = probe.run(kill_when)
    cpu_after = stage_probe.children_cpu_seconds()
    record["cpu_s"] = round(cpu_after - cpu_before, 2)
    record["peak_rss_mb"] = round(probe.peak_tree_bytes / 2**20, 1)
    record["files_written"] = _file_count(context.folder) - before_files
    if log is not None:
        methods = Counter(method for method, _, _ in requests)
        record["requests"] = dict(sorted(methods.items()))
        record["markers_put"] = sum(
            1 for method, path, _ in requests if method == "PUT" and "/commits/shard-" in path
        )
        record["requests_text"] = " ".join(f"{m} {n:,}" for m, n in sorted(methods.items()))
    expected_exit = 0 if kill_when is None else -signal.SIGKILL
    if record["exit"] not in (0, expected_exit):
        raise RuntimeError(
            f"stage {name!r} exited {record['exit']}; see {context.folder / 'stages.log'}"
        )
    return record


def _file_count(folder: Path) -> int:
    return sum(len(names) for _, _, names in os.walk(folder))


def _committed_markers(context: ChainContext, shard_rows: int) -> Callable[[], int]:
    """A counter of the store's commit markers that costs the measured store no request."""
    if context.site.log is None:
        commits = Path(context.store(shard_rows)) / VIEW / "commits"
        return lambda: len(os.listdir(commits)) if commits.is_dir() else 0
    log = context.site.log
    prefix = f"/{context.folder.name}/store{shard_rows}/{VIEW}/commits/shard-"
    seen = {"cursor": len(log.entries), "markers": 0}

    def count() -> int:
        # Only the entries since the last poll: the log grows by thousands of requests.
        end = len(log.entries)
        fresh = log.entries[seen["cursor"] : end]
        seen["markers"] += sum(1 for m, p, _ in fresh if m == "PUT" and prefix in p)
        seen["cursor"] = end
        return seen["markers"]

    return count


def _shards_in_view(context: ChainContext, shard_rows: int) -> int:
    return -(-len(context.dataset.image_ids) // shard_rows)


def _with_request_rate(record: dict[str, Any], shards: int) -> dict[str, Any]:
    if "requests" in record and shards:
        record["requests_per_shard"] = round(sum(record["requests"].values()) / shards, 2)
    return record


def _with_further_shard_rate(
    context: ChainContext, fine: dict[str, Any], coarse: dict[str, Any]
) -> None:
    """Requests of each further shard: the same rows verified in shards of 64 and of 1024."""
    if "requests" not in fine:
        return
    added = _shards_in_view(context, 64) - _shards_in_view(context, 1024)
    extra = sum(fine["requests"].values()) - sum(coarse["requests"].values())
    fine["requests_per_further_shard"] = round(extra / max(added, 1), 2)


def run_chain(context: ChainContext) -> dict[str, dict[str, Any]]:
    """Every stage in order; returns their records by stage name."""
    data = context.dataset
    stages: dict[str, dict[str, Any]] = {}
    stages["manifest"] = run_stage(
        context,
        "manifest",
        [
            "-m",
            "pipelines.manifest",
            "--images",
            str(data.images),
            "--dataset",
            "ava",
            "--out",
            context.manifest,
        ],
    )
    stages["labels"] = run_stage(
        context,
        "labels",
        [
            "-m",
            "pipelines.labels",
            "--dataset",
            "ava",
            "--raw",
            str(data.raw),
            "--manifest",
            context.manifest,
            "--out",
            context.labels,
        ],
    )
    _extractions(context, stages)
    store = context.store(64)
    stages["snapshot"] = run_stage(
        context, "snapshot", ["-m", "features.compact", "--store", store, "--view", VIEW]
    )
    for name, extra in (("verify", []), ("verify --deep", ["--deep"])):
        for rows in (64, 1024):
            label = name if rows == 64 else f"{name}, shards of 1024"
            argv = ["-m", "features.verify", "--store", context.store(rows), "--view", VIEW]
            record = run_stage(context, label, [*argv, *extra])
            stages[label] = _with_request_rate(record, _shards_in_view(context, rows))
        _with_further_shard_rate(context, stages[name], stages[f"{name}, shards of 1024"])
    probe_out = context.folder / "query.json"
    stages["query: index(), 1 id, 1k ids"] = run_stage(
        context,
        "query",
        [
            "-c",
            f"from benchmarks.ava_chain import query_probe; "
            f"query_probe({store!r}, {str(probe_out)!r})",
        ],
    )
    stages["query: index(), 1 id, 1k ids"]["timings"] = json.loads(probe_out.read_text())
    _training(context, stages)
    return stages


def _extractions(context: ChainContext, stages: dict[str, dict[str, Any]]) -> None:
    record = run_stage(context, "extract 64", ["-m", *context.extract_argv(64, "64")])
    stages["extract, shards of 64"] = _with_request_rate(record, record.get("markers_put", 0))
    total = _shards_in_view(context, 1024)
    committed = _committed_markers(context, 1024)
    killed = run_stage(
        context,
        "extract 1024 killed",
        ["-m", *context.extract_argv(1024, "1024-killed")],
        kill_when=lambda: committed() >= KILL_SHARE * total,
    )
    killed["shards_committed_when_killed"] = committed()
    stages["extract, shards of 1024, SIGKILL at half"] = killed
    resumed = run_stage(context, "extract 1024 resume", ["-m", *context.extract_argv(1024, "1024")])
    stages["extract, shards of 1024, re-run"] = resumed
    if "requests" in killed:
        both = Counter(killed["requests"]) + Counter(resumed["requests"])
        stages["extract, shards of 1024 (killed + resumed)"] = _with_request_rate(
            {
                "requests": dict(both),
                "requests_text": " ".join(f"{m} {n:,}" for m, n in sorted(both.items())),
                **{key: 0 for key in ("wall_s", "cpu_s", "peak_rss_mb")},
            },
            killed["markers_put"] + resumed["markers_put"],
        )


def _training(context: ChainContext, stages: dict[str, dict[str, Any]]) -> None:
    run = str(context.folder / "run")
    stages["train: one epoch, narrow head"] = run_stage(
        context,
        "train",
        [
            "-m",
            "jobs.train",
            "--store",
            context.store(64),
            "--view",
            VIEW,
            "--labels",
            context.labels,
            "--head",
            "narrow",
            "--out",
            run,
            "--epochs-per-stage",
            "1",
            "--learning-rates",
            "1e-3",
            "--patience",
            "1",
            "--quiet",
        ],
    )
    stages["evaluate (test split)"] = run_stage(
        context, "evaluate", ["-m", "jobs.evaluate", "--run", run, "--split", "test"]
    )


def query_probe(store: str, out: str) -> None:
    """In a fresh process: index(), then a 1-id and a 1k-id table() read, each timed once cold
    and then warm (median of 5); writes the seconds to out."""
    import statistics

    from features.store.query import FeatureStore

    timings: dict[str, float] = {}
    started = time.perf_counter()
    feature_store = FeatureStore(store)
    index = feature_store.index(VIEW)
    timings["index_cold_s"] = time.perf_counter() - started
    # Ids drawn from the Arrow column: a list of every id would be the probe's own memory,
    # charged to the stage's peak RSS.
    ids = index.column("image_id")
    rng = np.random.default_rng(0)
    for label, count in (("1id", 1), ("1k_ids", 1000)):
        runs = []
        for _ in range(6):
            chosen = ids.take(rng.choice(len(ids), count, replace=False)).to_pylist()
            begin = time.perf_counter()
            feature_store.table(VIEW, ids=chosen)
            runs.append(time.perf_counter() - begin)
        timings[f"{label}_cold_s"] = runs[0]
        timings[f"{label}_warm_s"] = statistics.median(runs[1:])
    timings["rows"] = index.num_rows
    Path(out).write_text(json.dumps({k: round(v, 4) for k, v in timings.items()}))


def bookkeeping(dataset: AvaDataset, folder: Path, sample: int = 2048) -> dict[str, float]:
    """Extraction bookkeeping per image on this dataset's images: the shard path with
    benchmarks.gpu_feed's free stand-in model minus the read+sha256+decode it contains, in
    CPU ms per image (1 decode thread, shards of 64, median of 5: a difference of two rates
    swings by 0.1 ms between runs)."""
    from benchmarks import gpu_feed
    from features.download.manifest import build_manifest, entries_from_folder

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    for image_id in dataset.image_ids[:sample]:
        shutil.copyfile(dataset.images / f"{image_id}.jpg", images / f"{image_id}.jpg")
    manifest = build_manifest(entries_from_folder(images), "bookkeeping")
    paths = sorted(str(path) for path in images.glob("*.jpg"))
    differences, pipeline_ms, load_ms = [], [], []
    for _ in range(5):
        _, pipeline_rate = gpu_feed.pipeline_rate(manifest, folder, 1, 64, 3_000_000, VIEW)
        _, load_rate = gpu_feed.load_rate(paths, 1, VIEW)
        pipeline_ms.append(1000 / pipeline_rate)
        load_ms.append(1000 / load_rate)
        differences.append(pipeline_ms[-1] - load_ms[-1])
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "images": len(paths),
        "shard_path_cpu_ms_per_image": round(statistics.median(pipeline_ms), 3),
        "read_decode_cpu_ms_per_image": round(statistics.median(load_ms), 3),
        "bookkeeping_ms_per_image": round(statistics.median(differences), 3),
    }
