"""The end of an extraction run, under its leases: fence check, finalize, publish, summary."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from features import retries
from features.extraction.planning import summarize
from features.extraction.shard import RUNS_IN_THIS_PROCESS
from features.store import FeatureView, Publication, ViewLease, publish_with_markers
from schemas.errors import LeaseLostError, StoreError

LOGGER = logging.getLogger(__name__)


def still_held(leases: list[ViewLease], outcome: str) -> bool:
    """Whether this run may still write its views (snapshot, run summary). A lost lease after
    a failed run is logged (the run's own error is raised); after a completed one, raised."""
    try:
        for lease in leases:
            lease.ensure_held()
    except LeaseLostError as error:
        if outcome != "failed":
            raise
        LOGGER.error("%s; nothing more is written to the view", error)
        return False
    return True


def close_run(
    views: list[FeatureView],
    leases: dict[str, ViewLease],
    run_id: str,
    outcome: str,
    seconds: float,
    runner: str,
) -> dict[str, Any]:
    """Finalize and publish every view (under its lease), then summarize from the markers
    the first view's snapshot read (when it published; else from all of its markers)."""
    published = []
    for view in views:
        view.finalize()
        published.append(publish(view, run_id, outcome, leases[view.path]))
    new_markers = published[0].new_markers if published[0] is not None else None
    summary = summarize(views, run_id, seconds, runner, new_markers)
    summary.update(outcome=outcome)
    return summary


def worker_retries(summary: dict[str, Any], run_id: str) -> dict[str, int]:
    """What workers in other processes counted (summarize's sum over this run's markers, so
    no marker is read again); empty when the runner ran them in this process, whose own
    counters hold them already."""
    if run_id in RUNS_IN_THIS_PROCESS:
        return {}
    return dict(summary["store_retries_markers"])


def store_retries(counted_before: dict[str, int], workers: dict[str, int]) -> dict[str, int]:
    """Object-store retries and settled lost answers of the run, by kind: this process's
    since counted_before, plus the workers' (see _worker_retries)."""
    totals = Counter(retries.counts_since(counted_before))
    totals.update(workers)
    return dict(sorted(totals.items()))


def record_takeovers(store: str, leases: list[ViewLease], run_id: str) -> list[dict[str, Any]]:
    """Log lease takeovers in the views' run history at once (the summary repeats them)."""
    takeovers = [lease.taken_over for lease in leases if lease.taken_over is not None]
    for lease in leases:
        if lease.taken_over is not None:
            name = lease.view_path.rstrip("/").rsplit("/", 1)[-1]
            record = {"run_id": run_id, "outcome": "started", "lease_takeovers": [lease.taken_over]}
            FeatureView(store, name).write_run_summary(run_id, record)
    return takeovers


def publish(view: FeatureView, run_id: str, outcome: str, lease: ViewLease) -> Publication | None:
    """Publish the view's snapshot (readers then open O(1) files per lookup). After a failed
    run a publishing error is logged, not raised over the run's own error (returns None)."""
    try:
        return publish_with_markers(view, run_id, lease)
    except StoreError as error:
        if outcome != "failed":
            raise
        LOGGER.warning("view %s: no snapshot published after the failed run: %s", view.name, error)
        return None
