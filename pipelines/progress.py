"""Progress bar and run summary for the launcher, fed by commit markers (works with any runner)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from tqdm import tqdm

from features import files
from features.store import FeatureView, ShardSpec
from schemas.errors import StoreError

LOGGER = logging.getLogger(__name__)
REMOTE_SLOWDOWN = 0.05  # on object stores, wait this share of the elapsed time between listings
MAX_REMOTE_INTERVAL = 30.0


class CommitProgress:
    """Context manager: a tqdm bar over images, advanced as shard commit markers appear."""

    def __init__(
        self, view: FeatureView, shards: Sequence[ShardSpec], interval: float = 1.0
    ) -> None:
        self._view = view
        self._pending = {f"{shard.name}.json": shard.rows for shard in shards}
        self._interval = interval
        self._stop = threading.Event()
        self._bar = tqdm(
            total=sum(self._pending.values()), unit="img", desc="extract", disable=None
        )
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> CommitProgress:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._advance()
        self._bar.close()

    def _advance(self) -> None:
        """Count newly committed shards; the bar is best effort, so a store that cannot be
        listed right now (its retries ran out) is logged, never raised into the run."""
        try:
            present = set(files.list_names(files.join(self._view.path, "commits")))
        except (StoreError, OSError) as error:
            LOGGER.warning("progress: cannot list committed shards: %s", error)
            return
        done = [name for name in self._pending if name in present]
        for name in done:
            self._bar.update(self._pending.pop(name))

    def _poll(self) -> None:
        started = time.monotonic()
        while not self._stop.wait(self._wait(time.monotonic() - started)):
            self._advance()

    def _wait(self, elapsed: float) -> float:
        """Seconds to the next listing. A local listing is free; an object store bills every
        LIST page (1,000 markers), so there the bar slows down as the run goes on: 1 s at
        first, then 5 % of the time elapsed, at most 30 s (about 110 listings in 20 minutes,
        whatever the shard count)."""
        if files.is_local(self._view.path):
            return self._interval
        return min(MAX_REMOTE_INTERVAL, max(self._interval, REMOTE_SLOWDOWN * elapsed))


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable run summary for the CLI."""
    lines = [
        f"extraction run {summary['run_id']} on {summary['runner']}: "
        f"views {', '.join(summary['views'])}",
        f"  weights: {summary['weights_id']} (sha256 {summary['weights_sha256'][:16]}…)",
        f"  shards: {summary['shards_committed_this_run']} written this run, "
        f"{summary['shards_total']} in view",
        f"  images: {summary['images_processed_this_run']} processed in "
        f"{summary['wall_seconds']:.1f} s ({summary['images_per_second']:.2f} images/s); "
        f"{summary['rows_committed']}/"
        f"{summary['rows_total']} rows committed",
        "  status counts (all committed rows):",
    ]
    lines += [f"    {status:<20} {count:>8}" for status, count in summary["status_counts"].items()]
    for failure in summary["failures"][:10]:
        lines.append(f"    ! {failure['image_id']}: {failure['error']}")
    if len(summary["failures"]) > 10:
        lines.append(f"    ! … {len(summary['failures']) - 10} more in the run summary JSON")
    lines.append(_store_line(summary.get("store_retries", {})))
    lines.append(_metrics_line(summary.get("beam_metrics", {})))
    return "\n".join(lines)


def _metrics_line(metrics: dict[str, Any]) -> str:
    """'  beam metrics: 3 shards, 2.1 MB written; ms per image: decode 3.1, forward 45.0, ...'."""
    if not metrics.get("supported"):
        return f"  beam metrics: {metrics.get('reason', 'none')}"
    counters, spread = metrics["counters"], metrics["distributions_ms"]
    means = ", ".join(
        f"{name.removesuffix('_ms')} {spread[name]['mean']:.1f}"
        for name in ("read_ms", "decode_ms", "forward_ms", "write_ms")
        if name in spread
    )
    return (
        f"  beam metrics: {counters.get('shards', 0)} shard(s), "
        f"{counters.get('bytes_written', 0) / 1e6:.1f} MB written; ms per image (mean): {means}"
    )


def _store_line(counts: dict[str, int]) -> str:
    """'  store: 12 requests retried (503: 7, reset: 5); 1 lost answer settled (create: 1)'."""
    retried = {k.removeprefix("retry "): v for k, v in counts.items() if k.startswith("retry ")}
    settled = {
        k.removeprefix("ambiguous "): v for k, v in counts.items() if k.startswith("ambiguous ")
    }
    if not retried and not settled:
        return "  store: no request retried"

    def listed(part: dict[str, int]) -> str:
        return ", ".join(f"{kind}: {count}" for kind, count in sorted(part.items()))

    text = f"  store: {sum(retried.values())} request(s) retried"
    text += f" ({listed(retried)})" if retried else ""
    if settled:
        text += f"; {sum(settled.values())} lost answer(s) settled by reading back"
        text += f" ({listed(settled)})"
    return text
