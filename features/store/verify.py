"""Verify a view: markers, index parts, statuses, digests, shapes and that nothing uncommitted leaks."""

from __future__ import annotations

import argparse
import hashlib
from collections import Counter
from collections.abc import Sequence

import numpy as np

from features import files, preflight
from features.cli import add_common_arguments, cli_entry_points, configure_logging
from features.memory import fix_mmap_threshold
from features.store.fanout import iterate_in_order
from features.store.query import FeatureStore
from features.store.verify_report import VerificationReport
from features.store.verify_snapshot import check_snapshot_index, check_snapshot_markers
from features.store.verify_sources import ShardSources
from features.store.view import CommitMarker, FeatureView, ShardSpec
from schemas.errors import StoreError
from schemas.tables import FEATURE_INDEX_SCHEMA


def _check_layout(view: FeatureView, report: VerificationReport) -> None:
    layout, spec = view.array.layout(), view.spec
    expected_shape = (int(view.meta["rows"]), len(spec.variants), *spec.feature_shape)
    if layout.shape != expected_shape:
        report.problems.append(f"array shape {layout.shape} != spec/allocation {expected_shape}")
    if np.dtype(layout.dtype) != np.dtype(spec.storage_dtype):
        report.problems.append(
            f"array dtype {layout.dtype} != spec storage dtype {spec.storage_dtype}"
        )
    if layout.shard_rows != view.shard_rows:
        report.problems.append(f"array shard rows {layout.shard_rows} != view {view.shard_rows}")
    if layout.compression != view.compression:
        report.problems.append(f"array compression {layout.compression} != view {view.compression}")


def _check_committed_shard(
    sources: ShardSources,
    shard: ShardSpec,
    marker: CommitMarker,
    deep: bool,
    report: VerificationReport,
) -> None:
    view = sources.view
    where = f"shard {shard.index} (rows {shard.row_start}:{shard.row_stop})"
    try:
        found = sources.index_rows(shard, marker, deep)
    except StoreError as error:
        report.problems.append(f"{where}: {error}")
        return
    if found is None:
        path = view.index_part_path(shard)
        report.problems.append(f"{where}: committed but its index part {path} is missing")
        return
    index, schema = found
    if schema.remove_metadata() != FEATURE_INDEX_SCHEMA:
        report.problems.append(f"{where}: index part schema differs from FEATURE_INDEX_SCHEMA")
    if index.column("image_id").to_pylist() != view.shard_image_ids(shard):
        report.problems.append(f"{where}: index image ids differ from the row allocation")
    if index.column("row").to_pylist() != list(range(shard.row_start, shard.row_stop)):
        report.problems.append(
            f"{where}: index rows are not {shard.row_start}..{shard.row_stop - 1}"
        )
    statuses = index.column("status").to_pylist()
    if dict(Counter(statuses)) != dict(marker.status_counts):
        report.problems.append(
            f"{where}: status counts {dict(Counter(statuses))} != marker {dict(marker.status_counts)}"
        )
    try:
        stored, checksum = sources.features(shard, deep)
    except Exception as error:  # a corrupt object fails in the codec (Blosc, HDF5, zarr)
        where_file = files.join(view.array.path, view.array.shard_key(shard.index))
        report.problems.append(f"{where}: {where_file} cannot be decoded ({error})")
        return
    if deep:
        _check_checksum(view, shard, marker, checksum or "", report)
    _check_values(where, shard, statuses, stored, report)  # fp16 checked as stored: no copy


def _check_values(
    where: str,
    shard: ShardSpec,
    statuses: list[str],
    values: np.ndarray,
    report: VerificationReport,
) -> None:
    """ok rows are finite; rows of any other status are all NaN."""
    flat = values.reshape(len(values), -1)
    finite = np.asarray(np.isfinite(flat).all(axis=1))
    all_nan = np.asarray(np.isnan(flat).all(axis=1))
    for offset, status in enumerate(statuses):
        if status == "ok" and not finite[offset]:
            report.problems.append(f"{where}: row {shard.row_start + offset} is ok but has NaN/inf")
        if status != "ok" and not all_nan[offset]:
            report.problems.append(
                f"{where}: row {shard.row_start + offset} is {status} but has values"
            )
    report.rows_checked += shard.rows


def _check_uncommitted_shards(
    sources: ShardSources, shards: list[ShardSpec], report: VerificationReport
) -> None:
    for shard, what in sources.uncommitted_leftovers(shards):
        if what == "index part":
            report.notes.append(
                f"shard {shard.index}: index part without a marker (interrupted write; "
                "invisible to readers, rewritten by the next run)"
            )
        else:
            report.notes.append(
                f"shard {shard.index}: uncommitted bytes present (invisible to readers)"
            )


def _check_checksum(
    view: FeatureView,
    shard: ShardSpec,
    marker: CommitMarker,
    checksum: str,
    report: VerificationReport,
) -> None:
    """Deep check: the shard's stored features object still has the bytes its marker recorded."""
    if marker.features_sha256 is None:
        report.notes.append(
            f"shard {shard.index}: marker has no features checksum (written before checksums)"
        )
        return
    if checksum != marker.features_sha256:
        now = checksum[:12] + "…" if checksum else "missing"
        features_file = f"{view.array.directory_name}/{view.array.shard_key(shard.index)}"
        report.problems.append(
            f"shard {shard.index}: {files.join(view.path, features_file)} changed since commit "
            f"(sha256 recorded {marker.features_sha256[:12] or 'absent'}…, now {now})"
        )


def _check_listed_shard(
    sources: ShardSources, shard: ShardSpec, deep: bool
) -> tuple[VerificationReport, str | None]:
    """Read one listed shard's marker (one GET) and check the shard against it.

    Returns:
        The shard's own report, and its marker's sha256 (None when the marker is invalid).
        Only the digest outlives the check, so a view's markers (each with its index rows)
        are never all held at once.
    """
    own = VerificationReport(sources.view.name)
    try:
        marker, data = sources.view.read_marker_with_bytes(shard)
    except StoreError as error:
        own.problems.append(str(error))
        return own, None
    _check_committed_shard(sources, shard, marker, deep, own)
    return own, hashlib.sha256(data).hexdigest()


def _check_visible_rows(
    view: FeatureView, committed: list[ShardSpec], report: VerificationReport
) -> None:
    """Readers see rows of committed shards only (a mask of the view's rows, not a set)."""
    allowed = np.zeros(int(view.meta["rows"]), dtype=bool)
    for shard in committed:
        allowed[shard.row_start : shard.row_stop] = True
    try:
        visible = view.committed_index().column("row").to_numpy()
    except StoreError as error:  # what readers would hit (a missing piece): a problem
        report.problems.append(str(error))
        return
    inside = (visible >= 0) & (visible < len(allowed))
    outside = int((~inside).sum()) + int((~allowed[visible[inside]]).sum())
    if outside:
        report.problems.append(f"readers see {outside} row(s) outside committed shards")


def verify_view(view: FeatureView, deep: bool = False) -> VerificationReport:
    """Check every committed shard of a view and that readers see committed rows only.

    Args:
        view: the view.
        deep: also recompute every committed shard's features checksum (reads all bytes).

    Returns:
        The report: problems (verification failed) and notes.
    """
    report = VerificationReport(view.name)
    _check_layout(view, report)
    view.allocation_keys, view.spec  # noqa: B018 (loaded once here, not by each reading thread)
    sources = ShardSources(view)
    sources.prepare()
    snapshot = check_snapshot_index(sources, report)
    listed = view.listed_shards()
    checks = iterate_in_order(lambda shard: _check_listed_shard(sources, shard, deep), listed)
    digests: dict[int, str] = {}
    for shard, (own, digest) in zip(listed, checks, strict=True):
        # Each shard reports on its own; merged in shard order (reads run in parallel).
        report.problems += own.problems
        report.notes += own.notes
        if digest is not None:
            digests[shard.index] = digest
            report.rows_checked += own.rows_checked
            report.shards_checked += 1
    uncommitted = [shard for shard in view.shards() if shard.index not in digests]
    _check_uncommitted_shards(sources, uncommitted, report)
    if snapshot is not None:
        check_snapshot_markers(sources, snapshot, digests, report)
    sources.release()  # the snapshot's rows; the readers' own copy is read next
    if len(digests) == len(listed):  # an invalid marker would fail the readers' read too
        committed = [shard for shard in view.shards() if shard.index in digests]
        _check_visible_rows(view, committed, report)
    if files.exists(files.join(view.path, "lease.json")):
        report.notes.append("a writer lease is present: a run may be writing right now")
    return report


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the verify CLI."""
    parser = argparse.ArgumentParser(
        prog="python -m features.store.verify",
        description="Verify committed shards of feature views.",
    )
    parser.add_argument("--store", required=True, help="store root (path or URL)")
    parser.add_argument("--view", action="append", help="view to verify (repeatable; default: all)")
    parser.add_argument(
        "--deep",
        action="store_true",
        help="also recompute each committed shard's features checksum (reads every stored byte)",
    )
    add_common_arguments(parser)
    return parser


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    fix_mmap_threshold()  # verify decodes every shard: freed buffers go back to the OS
    preflight.check_input_folder(args.store, "--store")
    store = FeatureStore(args.store)
    names = args.view or store.views()
    if not names:
        raise StoreError(f"{args.store}: no views to verify")
    failed = 0
    for name in names:
        report = verify_view(store.view(name), deep=args.deep)
        verdict = "OK" if report.ok else f"FAILED ({len(report.problems)} problem(s))"
        print(
            f"{name}: {verdict}: {report.shards_checked} committed shard(s), {report.rows_checked} row(s) checked"
        )
        for problem in report.problems:
            print(f"  problem: {problem}")
        for note in report.notes:
            print(f"  note: {note}")
        failed += not report.ok
    return 1 if failed else 0


run, main = cli_entry_points(_main)


if __name__ == "__main__":
    main()
