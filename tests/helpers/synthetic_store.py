"""Small feature stores whose features encode their own row id and variant (alignment tests)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from features.extraction.planning import allocate_rows, ensure_store
from features.store.view import FeatureView
from features.training.labels import TrainingLabels
from schemas.tables import MANIFEST_SCHEMA
from schemas.view_spec import FeatureViewSpec


def synthetic_manifest(n: int) -> pa.Table:
    """n images with ids img0000.. listed in reverse order (allocation sorts them)."""
    ids = [f"img{i:04d}" for i in range(n)][::-1]
    return pa.table(
        {
            "dataset": ["t"] * n,
            "image_id": ids,
            "uri": [f"/x/{i}.jpg" for i in ids],
            "bytes": [10] * n,
            "width": [100] * n,
            "height": [80] * n,
            "sha256": ["0" * 64] * n,
            "split": [None] * n,
        },
        schema=MANIFEST_SCHEMA,
    )


def encoded_features(spec: FeatureViewSpec, rows: np.ndarray, seed: int = 0) -> np.ndarray:
    """[n, variants, *shape] float16 noise whose first two values are the row id and variant."""
    rng = np.random.default_rng(seed)
    variants = len(spec.variants)
    values = rng.standard_normal((len(rows), variants, int(np.prod(spec.feature_shape))))
    values[:, :, 0] = rows[:, None]
    values[:, :, 1] = np.arange(variants)[None, :]
    return values.reshape(len(rows), variants, *spec.feature_shape).astype(np.float16)


def build_encoded_view(
    root: str, spec: FeatureViewSpec, n: int, shard_rows: int, bad_rows: frozenset[int]
) -> FeatureView:
    """Create and fully commit a view of n rows; rows in bad_rows get status decode_error."""
    ensure_store(root)
    view = FeatureView(root, spec.name)
    view.ensure(spec, allocate_rows(synthetic_manifest(n)), shard_rows, "zarr")
    for shard in view.shards():
        rows = view.allocation.slice(shard.row_start, shard.rows).to_pylist()
        statuses = ["decode_error" if r["row"] in bad_rows else "ok" for r in rows]
        index = pa.table(
            {
                "image_id": [r["image_id"] for r in rows],
                "row": [r["row"] for r in rows],
                "status": statuses,
                "error": [None if s == "ok" else "bad" for s in statuses],
                "dataset": [r["dataset"] for r in rows],
                "split": [None] * shard.rows,
                "width": [100] * shard.rows,
                "height": [80] * shard.rows,
                "read_ms": [1.0] * shard.rows,
                "decode_ms": [1.0] * shard.rows,
                "model_ms": [1.0] * shard.rows,
            }
        )
        values = encoded_features(spec, np.arange(shard.row_start, shard.row_stop), shard.index)
        view.commit_shard(shard, values, index, "run-1", seconds=0.1)
    return view


def score_of_row(rows: np.ndarray) -> np.ndarray:
    """The known label function of a row id."""
    return 1.0 + 0.25 * np.asarray(rows, dtype=np.float64)


def labels_by_row(image_ids: list[str], splits: list[str]) -> TrainingLabels:
    """Labels for ids 'imgNNNN' whose MOS is score_of_row(NNNN) (ids sort like rows)."""
    rows = np.asarray([int(image_id[3:]) for image_id in image_ids])
    scores = score_of_row(rows)
    distributions = np.zeros((len(rows), 10), np.float32)
    distributions[np.arange(len(rows)), rows % 10] = 1.0
    return TrainingLabels(
        image_ids=np.asarray(image_ids, dtype=object),
        scores=scores,
        distributions=distributions,
        splits=np.asarray(splits, dtype=object),
        label_version="lv-test",
        source="memory",
    )
