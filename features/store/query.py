"""Read committed features as pyarrow tables: `FeatureStore(path).table(view, ids, filter)`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features import files
from features.cli import add_common_arguments, configure_logging, positive_int, run_cli
from features.store.filters import parse_where
from features.store.root import STORE_MARKER
from features.store.view import FeatureView
from schemas.errors import StoreError, UnknownImageIdsError

# Above this many separate row runs, one orthogonal selection beats many range reads.
_MAX_RANGE_READS = 16


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
    if len(rows) == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(rows)]])
    return [(int(rows[a]), int(rows[b - 1]) + 1) for a, b in zip(starts, stops, strict=True)]


def read_feature_rows(view: FeatureView, rows: np.ndarray) -> np.ndarray:
    """Features of the given rows, in the given order, touching only the chunks they live in."""
    unique, inverse = np.unique(rows, return_inverse=True)
    runs = _row_runs(unique)
    array = view.array
    if len(runs) <= _MAX_RANGE_READS:
        blocks = [array.read_range(start, stop) for start, stop in runs]
        values = np.concatenate(blocks) if blocks else array.read_rows(unique)
    else:
        values = array.read_rows(unique)
    return values[inverse]


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
        if not view.exists():
            raise StoreError(f"no view {name!r} in {self.path}; views: {self.views()}")
        return view

    def index(self, view: str, filter: pc.Expression | str | None = None) -> pa.Table:
        """Committed index rows of a view, optionally filtered (no features read)."""
        index = self.view(view).committed_index()
        if filter is None:
            return index
        expression = (
            parse_where(filter, set(index.column_names)) if isinstance(filter, str) else filter
        )
        return index.filter(expression)

    def table(
        self,
        view: str,
        ids: Sequence[str] | None = None,
        filter: pc.Expression | str | None = None,
        columns: Sequence[str] | None = None,
    ) -> pa.Table:
        """Committed rows of a view as a table with a `features` fixed_shape_tensor column.

        Args:
            view: view name.
            ids: image ids to return, in this order (default: all committed rows, by row).
            filter: a pyarrow expression or a where-string over the index columns.
            columns: index columns to keep besides image_id (default: all).

        Returns:
            Table with image_id, the index columns and `features` of shape
            [variants, *feature_shape] (null for rows whose status is not ok).

        Raises:
            UnknownImageIdsError: an id is not a committed row of the view.
            ConfigError: a bad filter string.
        """
        feature_view = self.view(view)
        index = self.index(view, filter)
        if ids is not None:
            index = self._select_ids(index, list(ids), view)
        if columns is not None:
            keep = ["image_id", *[c for c in columns if c not in ("image_id", "features")]]
            unknown = [c for c in keep if c not in index.column_names]
            if unknown:
                raise StoreError(f"unknown column(s) {unknown}; columns: {index.column_names}")
        rows = index.column("row").to_numpy()
        values = read_feature_rows(feature_view, rows)
        valid = pc.equal(index.column("status"), "ok").to_numpy(zero_copy_only=False)
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

    def iter_blocks(self, view: str, block_rows: int | None = None) -> Iterator[pa.Table]:
        """Stream committed rows in row blocks aligned to shards (training scans)."""
        feature_view = self.view(view)
        block_rows = block_rows or feature_view.shard_rows
        index = feature_view.committed_index()
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
    parser.add_argument("--limit", type=positive_int("--limit"), default=10, help="rows to print")
    add_common_arguments(parser)
    return parser


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    store = FeatureStore(args.store)
    if args.view is None:
        for name in store.views():
            view = store.view(name)
            print(
                f"{name}: {view.meta['rows']} rows, shape {list(view.spec.feature_shape)}, "
                f"variants {list(view.spec.variants)}, weights {view.spec.weights_id}"
            )
        return 0
    index = store.index(args.view, args.where)
    if args.ids is None:
        index = index.slice(0, args.limit)
    ids = args.ids if args.ids is not None else index.column("image_id").to_pylist()
    table = store.table(args.view, ids=ids, filter=args.where)
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
