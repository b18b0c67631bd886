"""Reconcile an existing view with a newer manifest: append new images, mark removed ones."""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from features import files
from features.store.backends import FeatureArray
from schemas.tables import ROW_ALLOCATION_SCHEMA

LOGGER = logging.getLogger(__name__)


class AppendableView(Protocol):
    """What reconciling needs of a view (FeatureView provides it; no import, so no cycle)."""

    name: str
    path: str

    @property
    def allocation(self) -> pa.Table: ...

    @property
    def meta(self) -> dict[str, Any]: ...

    @property
    def shard_rows(self) -> int: ...

    @property
    def array(self) -> FeatureArray: ...

    def removed_image_ids(self) -> set[str]: ...

    def reset_cache(self) -> None: ...


def _next_boundary(rows: int, shard_rows: int) -> int:
    return -(-rows // shard_rows) * shard_rows


def reconcile_manifest(view: AppendableView, manifest_allocation: pa.Table) -> tuple[int, int]:
    """Bring the view's rows in line with a manifest, never moving or deleting existing rows.

    New images get rows in a fresh segment starting on the next shard boundary, so no
    committed shard is rewritten and each new shard still has exactly one writer. Images no
    longer in the manifest keep their rows and are listed in removed.json (the index then shows
    `removed = true`); an image that comes back is unmarked.

    Args:
        view: an existing view.
        manifest_allocation: allocate_rows(manifest) of the new manifest.

    Returns:
        (number of appended rows, number of rows marked removed).
    """
    stored = view.allocation
    stored_ids = set(stored.column("image_id").to_pylist())
    manifest_ids = set(manifest_allocation.column("image_id").to_pylist())
    new_ids = manifest_ids - stored_ids
    removed = (stored_ids - manifest_ids) | (view.removed_image_ids() - manifest_ids)
    if removed != view.removed_image_ids():
        files.atomic_write_text(files.join(view.path, "removed.json"), json.dumps(sorted(removed)))
        LOGGER.info(
            "view %s: %d image(s) no longer in the manifest are marked removed",
            view.name,
            len(removed),
        )
    if new_ids:
        _append(view, manifest_allocation, new_ids)
    view.reset_cache()
    return len(new_ids), len(removed)


def _append(view: AppendableView, manifest_allocation: pa.Table, new_ids: set[str]) -> None:
    """Resize the array, then publish the longer allocation, then view.json (readers' order)."""
    mask = pc.is_in(manifest_allocation.column("image_id"), pa.array(sorted(new_ids), pa.string()))
    additions = manifest_allocation.filter(mask).sort_by([("image_id", "ascending")])
    start = _next_boundary(int(view.meta["rows"]), view.shard_rows)
    rows = pa.array(range(start, start + additions.num_rows), pa.int64())
    additions = additions.set_column(additions.schema.get_field_index("row"), "row", rows)
    allocation = pa.concat_tables(
        [view.allocation.cast(ROW_ALLOCATION_SCHEMA), additions.cast(ROW_ALLOCATION_SCHEMA)]
    )
    total_rows = start + additions.num_rows
    view.array.resize(total_rows)
    files.atomic_write_parquet(files.join(view.path, "rows.parquet"), allocation)
    meta = {**view.meta, "rows": total_rows}
    files.atomic_write_text(files.join(view.path, "view.json"), json.dumps(meta, indent=2))
    LOGGER.info(
        "view %s: appended %d new image(s) at rows %d..%d",
        view.name,
        additions.num_rows,
        start,
        total_rows - 1,
    )
