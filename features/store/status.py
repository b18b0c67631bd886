"""A view's state at a glance: shard counts and what its latest extraction run did."""

from __future__ import annotations

from typing import Any

from features.store.view import FeatureView

LATEST_RUN_COUNTERS = ("run_id", "shards_committed_this_run", "images_forwarded_this_run")


def view_status(store: str, view: str) -> dict[str, Any]:
    """Committed shards of a view and the counters of its latest extraction run.

    Args:
        store: store root (local path or fsspec URL).
        view: view name.

    Returns:
        {"path", "shards_total", "shards_committed", "runs", "latest_run": {counter: value}}.
    """
    store_view = FeatureView(store, view)
    history = store_view.run_history()
    latest = max(history, key=lambda run: str(run.get("run_id", ""))) if history else {}
    return {
        "path": store_view.path,
        "shards_total": len(store_view.shards()),
        "shards_committed": len(store_view.committed()),
        "runs": len(history),
        "latest_run": {key: latest.get(key) for key in LATEST_RUN_COUNTERS},
    }
