"""A tiny extraction job (4 small images, 2 shards) and a run-independent fingerprint of a store."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tests.helpers import extract_cli

VIEW = "irnv2_mlsp_narrow"
SHARD_ROWS = 2
# What differs between two clean runs of the same command: when and by which run (and lease
# holding), how long, and how many requests the store made it retry.
RUN_FIELDS = {"run_id", "committed_at", "seconds", "created_at", "lease_token", "store_retries"}
TIMING_COLUMNS = {"read_ms", "decode_ms", "model_ms"}
# Snapshots name their pieces with a random tag and record the run (reason), the pieces' sizes
# (index parts hold timings) and the digests of markers (which hold run ids): all run fields.
SNAPSHOT_RUN_FIELDS = RUN_FIELDS | {"reason", "sizes"}
RUN_COLUMNS = TIMING_COLUMNS | {"marker_sha256"}
_PIECE_TAG = re.compile(r"(\d{6})-[0-9a-f]+\.")


def _untagged(text: str) -> str:
    return _PIECE_TAG.sub(r"\1-TAG.", text)


def _without_run_fields(value: Any) -> Any:
    """A snapshot record (or pointer) with run fields dropped and piece tags masked."""
    if isinstance(value, dict):
        return {
            k: _without_run_fields(v) for k, v in value.items() if k not in SNAPSHOT_RUN_FIELDS
        }
    if isinstance(value, list):
        return [_without_run_fields(v) for v in value]
    return _untagged(value) if isinstance(value, str) else value


def _table_without_run_columns(table: pa.Table) -> list[dict[str, Any]]:
    return table.drop_columns([c for c in table.column_names if c in RUN_COLUMNS]).to_pylist()


def _snapshot_entry(path: Path) -> Any:
    """Snapshot files compared by content, not by the run that wrote them."""
    if path.suffix == ".json":
        return _without_run_fields(json.loads(path.read_bytes()))
    if path.suffix == ".arrow":
        return _table_without_run_columns(pa.ipc.open_file(pa.memory_map(str(path))).read_all())
    return _table_without_run_columns(pq.read_table(path))


def tiny_manifest(root: Path, count: int = 4) -> Path:
    """Write count small JPEGs (75-80 px sides) and their manifest under root."""
    from features import files
    from features.download.manifest import build_manifest, entries_from_folder
    from pipelines.sample import write_sample

    write_sample(root, n=count, seed=14, broken=False, min_side=75, max_side=80)
    path = root / "manifest.parquet"
    table = build_manifest(entries_from_folder(root / "images"), "tiny")
    files.atomic_write_parquet(str(path), table)
    return path


def extract_argv(manifest: Path, store: Path) -> list[str]:
    """Arguments of pipelines.extract for the tiny job (random weights, shards of 2 rows)."""
    return extract_cli.extract_argv(
        manifest, store, "--direct_num_workers", "1", views=(VIEW,), shard_size=SHARD_ROWS
    )


def _json_without_run_fields(path: Path) -> Any:
    data = {k: v for k, v in json.loads(path.read_bytes()).items() if k not in RUN_FIELDS}
    if isinstance(data.get("index_rows"), dict):  # a marker's index rows hold timings too
        rows = data["index_rows"]
        data["index_rows"] = {k: v for k, v in rows.items() if k not in TIMING_COLUMNS}
    return data


def store_fingerprint(store: Path) -> dict[str, Any]:
    """Every file of the store by relative path: its bytes, except for what names the run.

    Features arrays, rows.parquet, spec.json and store.json are compared byte for byte; view.json
    and commit markers without their time/run-id fields; index parts without their timing
    columns; runs/ by the outcomes it records (file names are run ids). A leftover lease,
    temp file or extra file shows up as a key of its own.
    """
    fingerprint: dict[str, Any] = {}
    for path in sorted(p for p in store.rglob("*") if p.is_file()):
        relative = path.relative_to(store).as_posix()
        if relative.endswith(".cas.lock"):
            continue  # the lock file of the lease's compare-and-swap: empty, never deleted
        if "/snapshots/" in relative or relative.endswith("/_latest_snapshot.json"):
            fingerprint[_untagged(relative)] = _snapshot_entry(path)
        elif "/runs/" in relative:
            outcome = json.loads(path.read_bytes()).get("outcome")
            fingerprint.setdefault("runs outcomes", []).append(outcome)
        elif relative.endswith("/view.json") or "/commits/" in relative:
            fingerprint[relative] = _json_without_run_fields(path)
        elif "/index/" in relative:
            table = pq.read_table(path)
            fingerprint[relative] = table.drop_columns(
                [name for name in table.column_names if name in TIMING_COLUMNS]
            ).to_pylist()
        else:
            fingerprint[relative] = path.read_bytes()
    return fingerprint
