"""Beam metrics of an extraction: the Direct runner reports exact counts; Dask says it has none."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow.parquet as pq
import pytest

from features.store import FeatureView
from pipelines import extract
from pipelines.beam_extract import pipeline_metrics
from tests.helpers.tiny_extract import VIEW, extract_argv, tiny_manifest


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny extraction (4 images of the sample plus one corrupt file) on the Direct runner."""
    root = tmp_path_factory.mktemp("metrics")
    manifest = tiny_manifest(root / "sample", count=4)
    table = pq.read_table(manifest)
    broken = root / "sample" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    rows = table.slice(0, 1).to_pylist()[0] | {
        "image_id": "zz-broken", "uri": str(broken), "bytes": broken.stat().st_size
    }  # fmt: skip
    import pyarrow as pa

    grown = pa.concat_tables([table, pa.Table.from_pylist([rows], table.schema)])
    pq.write_table(grown, root / "manifest-broken.parquet")
    summary = root / "summary.json"
    argv = extract_argv(root / "manifest-broken.parquet", root / "store")
    assert extract.run([*argv, "--summary-json", str(summary)]) == 0
    return {"summary": json.loads(summary.read_text()), "store": root / "store"}


def test_counters_equal_what_the_store_committed(run: dict) -> None:
    metrics = run["summary"]["beam_metrics"]
    assert metrics["supported"] is True
    counters = metrics["counters"]
    view = FeatureView(str(run["store"]), VIEW)
    statuses = Counter(view.committed_index().column("status").to_pylist())
    assert statuses["ok"] == 4 and sum(statuses.values()) == 5  # the corrupt file is a row
    assert {
        k.removeprefix("images_"): v for k, v in counters.items() if k.startswith("images_")
    } == dict(statuses)
    assert counters["shards"] == len(view.committed()) == 3
    on_disk = sum(
        path.stat().st_size
        for pattern in ("features.zarr/c/*/0/0", "index/*.parquet", "commits/*.json")
        for path in (run["store"] / VIEW).glob(pattern)
    )
    assert counters["bytes_written"] == on_disk


def test_distributions_count_every_image(run: dict) -> None:
    spread = run["summary"]["beam_metrics"]["distributions_ms"]
    assert spread["decode_ms"]["count"] == spread["read_ms"]["count"] == 5
    assert spread["forward_ms"]["count"] == 4  # the corrupt file never reaches the model
    assert spread["write_ms"]["count"] == 5
    for values in spread.values():
        assert 0 <= values["min"] <= values["mean"] <= values["max"]


def test_a_runner_without_metrics_is_named_not_hidden() -> None:
    class DaskLikeResult:
        def metrics(self) -> None:
            raise NotImplementedError("collecting metrics will come later!")

    reported = pipeline_metrics(DaskLikeResult(), "dask")
    assert reported == {
        "supported": False,
        "reason": "runner 'dask' reports no metrics (collecting metrics will come later!)",
    }
