"""Read committed features as pyarrow tables: `FeatureStore(path).table(view, ids, filter)`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features import files, preflight
from features.cli import (
    add_common_arguments,
    configure_logging,
    positive_int,
    refuse_unused,
    run_cli,
)
from features.store.filters import parse_where
from features.store.root import STORE_MARKER
from features.store.row_scatter import key_runs
from features.store.snapshot import read_snapshot
from features.store.view import FeatureView
from schemas.errors import StoreError, UnknownImageIdsError

# Above this many separate row runs, one orthogonal selection beats many range reads.
_MAX_RANGE_READS = 16
DEFAULT_LIMIT = 10  # rows the CLI prints without --ids


def feature_tensor_type(shape: Sequence[int], dtype: str = "float16") -> pa.DataType:
    """Arrow type of the features column: fixed_shape_tensor(dtype, [variants, *feature_shape])."""
    return pa.fixed_shape_tensor(pa.from_numpy_dtype(np.dtype(dtype)), list(shape))


def tensor_array(values: np.ndarray, valid: np.ndarray | None = None) -> pa.ExtensionArray:
    """Wrap [N, *shape] values as a fixed_shape_tensor array; rows where valid is False are null."""
    shape = values.shape[1:]
    size = int(np.prod(shape))
    flat = pa.array(np.ascontiguousarray(values).reshape(-1))
    mask = None if valid is None else pa.array(~valid)
    storage = pa.FixedSizeListArray.from_arrays(flat, size, mask=mask)
    return pa.ExtensionArray.from_storage(feature_tensor_type(shape, str(values.dtype)), storage)


def _row_runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """Split sorted unique rows into contiguous [start, stop) runs."""
    # rows - position is constant along a run of consecutive rows.
    keys = rows - np.arange(len(rows))
    return [(int(rows[run.start]), int(rows[run.stop - 1]) + 1) for _, run in key_runs(keys)]


def read_feature_rows(view: FeatureView, rows: np.ndarray) -> np.ndarray:
    """Features of the given rows, in the given order, touching only the chunks they live in.

    Long runs of rows are scanned shard by shard (read_range decodes whole shards in threads);
    scattered or few rows are read chunk by chunk with byte-range reads (read_scattered).
    """
    unique, inverse = np.unique(rows, return_inverse=True)
    runs = _row_runs(unique)
    array = view.array
    if runs and len(runs) <= _MAX_RANGE_READS and len(unique) >= view.shard_rows:
        values = np.concatenate([array.read_range(start, stop) for start, stop in runs])
    else:
        values = array.read_scattered(unique)
    return values[inverse]


def _check_stored(
    view: FeatureView, index: pa.Table, values: np.ndarray, valid: np.ndarray
) -> None:
    """A committed ok row is never NaN: NaN there means its stored object went missing.

    Raises:
        StoreError: naming the shard's features file and the snapshot's claim.
    """
    if not len(values):
        return
    first = values.reshape(len(values), -1)[:, 0]
    lost = valid & np.isnan(first.astype(np.float32))
    if lost.any():
        row = int(index.column("row")[int(np.flatnonzero(lost)[0])].as_py())
        shard = row // view.shard_rows
        where = files.join(view.array.path, view.array.shard_key(shard))
        raise StoreError(
            f"{where}: shard {shard} is committed but its features are missing "
            f"(row {row} reads as fill value); run python -m features.verify --deep"
        )


class FeatureStore:
    """Read-only access to a store's views; only committed rows are ever visible."""

    def __init__(self, path: str) -> None:
        """Open a store root.

        Raises:
            StoreError: the path holds no feature store.
        """
        if not files.exists(files.join(path, STORE_MARKER)):
            raise StoreError(f"{path}: not a feature store (no {STORE_MARKER})")
        self.path = path

    def views(self) -> list[str]:
        """Names of the views in the store."""
        return [
            name
            for name in files.list_names(self.path)
            if files.exists(files.join(self.path, name, "view.json"))
        ]

    def view(self, name: str) -> FeatureView:
        """A view by name.

        Raises:
            StoreError: no such view.
        """
        view = FeatureView(self.path, name)
        try:
            view.meta  # noqa: B018 (reads view.json: the view exists)
        except StoreError:
            raise StoreError(f"no view {name!r} in {self.path}; views: {self.views()}") from None
        return view

    def index(
        self, view: str, filter: pc.Expression | str | None = None, as_of: int | None = None
    ) -> pa.Table:
        """Committed index rows of a view, optionally filtered (no features read).

        Args:
            view: view name.
            filter: a pyarrow expression or a where-string over the index columns.
            as_of: read this snapshot instead of the latest state (time travel).

        Raises:
            StoreError: no such view or snapshot.
        """
        return self._filtered(self.view(view).committed_index(as_of), filter)

    @staticmethod
    def _filtered(index: pa.Table, filter: pc.Expression | str | None) -> pa.Table:
        if filter is None:
            return index
        expression = (
            parse_where(filter, set(index.column_names)) if isinstance(filter, str) else filter
        )
        return index.filter(expression)

    def snapshots(self, view: str) -> list[dict[str, Any]]:
        """The view's snapshots, oldest first: number, created_at, reason, rows, shards."""
        feature_view = self.view(view)
        listed = []
        for number in feature_view.snapshots():
            snapshot = read_snapshot(feature_view.path, number)
            listed.append(
                {
                    "snapshot": number,
                    "created_at": snapshot.created_at,
                    "reason": snapshot.reason,
                    "index_rows": snapshot.index_rows,
                    "shards_committed": len(snapshot.committed_shards()),
                    "shard_count": snapshot.shard_count,
                }
            )
        return listed

    def _lookup(self, feature_view: FeatureView, ids: list[str], as_of: int | None) -> pa.Table:
        """Index rows of ids through the snapshot's pruned pieces (whole index without one)."""
        read = feature_view.snapshot_read(as_of)
        if read is None:
            return feature_view.marker_index()
        return read.lookup(ids)

    def table(
        self,
        view: str,
        ids: Sequence[str] | None = None,
        filter: pc.Expression | str | None = None,
        columns: Sequence[str] | None = None,
        as_of: int | None = None,
    ) -> pa.Table:
        """Committed rows of a view as a table with a `features` fixed_shape_tensor column.

        Args:
            view: view name.
            ids: image ids to return, in this order (default: all committed rows, by row).
            filter: a pyarrow expression or a where-string over the index columns.
            columns: index columns to keep besides image_id (default: all).
            as_of: read this snapshot instead of the latest state (time travel).

        Returns:
            Table with image_id, the index columns and `features` of shape
            [variants, *feature_shape] (null for rows whose status is not ok).

        Raises:
            UnknownImageIdsError: an id is not a committed row of the view.
            ConfigError: a bad filter string.
            StoreError: no such view or snapshot, or a committed shard's features are missing.
        """
        feature_view = self.view(view)
        if ids is None:
            index = self._filtered(feature_view.committed_index(as_of), filter)
        else:
            found = self._filtered(self._lookup(feature_view, list(ids), as_of), filter)
            index = self._select_ids(found, list(ids), view)
        if columns is not None:
            keep = ["image_id", *[c for c in columns if c not in ("image_id", "features")]]
            unknown = [c for c in keep if c not in index.column_names]
            if unknown:
                raise StoreError(f"unknown column(s) {unknown}; columns: {index.column_names}")
        rows = index.column("row").to_numpy()
        values = read_feature_rows(feature_view, rows)
        valid = pc.equal(index.column("status"), "ok").to_numpy(zero_copy_only=False)
        _check_stored(feature_view, index, values, valid)
        table = index.append_column("features", tensor_array(values, valid))
        return table.select([*keep, "features"]) if columns is not None else table

    @staticmethod
    def _select_ids(index: pa.Table, ids: list[str], view: str) -> pa.Table:
        positions = pc.index_in(pa.array(ids, pa.string()), index.column("image_id"))
        missing = [
            image_id
            for image_id, position in zip(ids, positions.to_pylist(), strict=True)
            if position is None
        ]
        if missing:
            shown = ", ".join(missing[:20]) + (" …" if len(missing) > 20 else "")
            raise UnknownImageIdsError(
                f"{len(missing)} image id(s) not among the committed rows of view {view!r} "
                f"(after any filter): {shown}"
            )
        return index.take(positions)

    def iter_blocks(
        self, view: str, block_rows: int | None = None, as_of: int | None = None
    ) -> Iterator[pa.Table]:
        """Stream committed rows in row blocks aligned to shards (training scans)."""
        feature_view = self.view(view)
        block_rows = block_rows or feature_view.shard_rows
        index = feature_view.committed_index(as_of)
        for start in range(0, index.num_rows, block_rows):
            part = index.slice(start, block_rows)
            values = read_feature_rows(feature_view, part.column("row").to_numpy())
            valid = pc.equal(part.column("status"), "ok").to_numpy(zero_copy_only=False)
            yield part.append_column("features", tensor_array(values, valid))


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the query CLI."""
    parser = argparse.ArgumentParser(
        prog="python -m features.store.query", description="Print committed rows of a feature view."
    )
    parser.add_argument("--store", required=True, help="store root (path or URL)")
    parser.add_argument("--view", help="view name (omit to list views)")
    parser.add_argument("--ids", nargs="+", help="image ids to fetch")
    parser.add_argument("--where", help="filter, e.g. \"split == 'test' and status == 'ok'\"")
    parser.add_argument(
        "--limit",
        type=positive_int("--limit"),
        default=None,
        help=f"rows to print (default {DEFAULT_LIMIT}; not with --ids)",
    )
    parser.add_argument(
        "--as-of", type=positive_int("--as-of"), help="read this snapshot (default: the latest)"
    )
    parser.add_argument(
        "--snapshots", action="store_true", help="list the view's snapshots and exit"
    )
    add_common_arguments(parser)
    return parser


def _print_snapshots(store: FeatureStore, view: str) -> int:
    snapshots = store.snapshots(view)
    if not snapshots:
        print(f"{view}: no snapshots (run python -m features.compact --store {store.path})")
    for item in snapshots:
        print(
            f"{item['snapshot']:>6}  {item['created_at']}  {item['reason']:<28} "
            f"{item['index_rows']} rows, {item['shards_committed']}/{item['shard_count']} shards"
        )
    return 0


def _refuse_unused(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit 2 on a flag the listing or read that is asked for would ignore."""
    reads = {"--ids": args.ids, "--where": args.where, "--limit": args.limit, "--as-of": args.as_of}
    if args.view is None:
        refuse_unused(
            parser, {**reads, "--snapshots": args.snapshots}, "without --view", "it lists the views"
        )
    if args.snapshots:
        refuse_unused(parser, reads, "with --snapshots", "it lists snapshots and reads no rows")
    refuse_unused(
        parser,
        {"--limit": args.limit if args.ids is not None else None},
        "with --ids",
        "every id asked for is printed",
    )


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _refuse_unused(parser, args)
    configure_logging(args.verbose)
    preflight.check_input_folder(args.store, "--store")
    store = FeatureStore(args.store)
    if args.view is None:
        for name in store.views():
            view = store.view(name)
            print(
                f"{name}: {view.meta['rows']} rows, shape {list(view.spec.feature_shape)}, "
                f"variants {list(view.spec.variants)}, weights {view.spec.weights_id}"
            )
        return 0
    if args.snapshots:
        return _print_snapshots(store, args.view)
    if args.ids is None:
        index = store.index(args.view, args.where, as_of=args.as_of).slice(
            0, args.limit or DEFAULT_LIMIT
        )
    ids = args.ids if args.ids is not None else index.column("image_id").to_pylist()
    table = store.table(args.view, ids=ids, filter=args.where, as_of=args.as_of)
    shown = table.drop_columns(["features"]).to_pandas().astype(object)
    shown = shown.where(shown.notna(), "")
    features = table.column("features")
    print(shown.to_string(index=False, max_colwidth=60))
    print(
        f"\n{table.num_rows} row(s); features: {features.type.storage_type.value_type} tensor "
        f"of shape {list(features.type.shape)} per row ({features.nbytes / 1e6:.2f} MB)"
    )
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    return run_cli(_main, argv)


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())


if __name__ == "__main__":
    main()
