"""features.store.view_status: shard counts and the latest run, as the DAG's summary reports them."""

from __future__ import annotations

from features import files
from features.store import FeatureView, view_status
from schemas.view_spec import FeatureViewSpec
from tests.helpers.synthetic_store import build_encoded_view

SPEC = FeatureViewSpec(name="narrow", taps=("mixed_5b",), weights_id="random:1")


def test_counts_shards_and_picks_the_latest_run(tmp_path) -> None:
    root = str(tmp_path)
    build_encoded_view(root, SPEC, 10, 4, frozenset())  # shards of 4, 4, 2 rows
    view = FeatureView(root, SPEC.name)
    files.remove_file(view.marker_path(view.shards()[-1]))  # the last shard is not committed
    for run_id, shards in (("20260101T000000-a", 3), ("20260102T000000-b", 1)):
        view.write_run_summary(run_id, {"run_id": run_id, "shards_committed_this_run": shards})
    status = view_status(root, SPEC.name)
    assert (status["shards_total"], status["shards_committed"], status["runs"]) == (3, 2, 2)
    assert status["latest_run"] == {
        "run_id": "20260102T000000-b",
        "shards_committed_this_run": 1,
        "images_forwarded_this_run": None,
    }
