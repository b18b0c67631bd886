"""Arrow schemas for the image manifest and the per-view feature index."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from schemas.errors import ManifestError

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("bytes", pa.int64(), nullable=False),
        pa.field("width", pa.int32(), nullable=True),
        pa.field("height", pa.int32(), nullable=True),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=True),
    ]
)

# One row per image of a view. Manifest columns that readers filter on (dataset, split) are
# copied in so a query never needs the manifest.
FEATURE_INDEX_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string(), nullable=True),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=True),
        pa.field("width", pa.int32(), nullable=True),
        pa.field("height", pa.int32(), nullable=True),
        pa.field("read_ms", pa.float32(), nullable=False),
        pa.field("decode_ms", pa.float32(), nullable=False),
        pa.field("model_ms", pa.float32(), nullable=False),
    ]
)

# Columns of the row allocation table a view keeps beside its features.
ROW_ALLOCATION_SCHEMA = pa.schema(
    [
        pa.field("row", pa.int64(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=True),
        pa.field("width", pa.int32(), nullable=True),
        pa.field("height", pa.int32(), nullable=True),
    ]
)


def conform_manifest(table: pa.Table, source: str = "manifest") -> pa.Table:
    """Check a manifest table against MANIFEST_SCHEMA and cast it to that schema.

    Args:
        table: the table as read from Parquet.
        source: a name for error messages (usually the file path).

    Returns:
        The table with exactly the manifest columns, in schema order and types.

    Raises:
        ManifestError: a column is missing, a non-nullable column has nulls, or ids repeat.
    """
    missing = [name for name in MANIFEST_SCHEMA.names if name not in table.column_names]
    if missing:
        raise ManifestError(f"{source}: missing column(s) {', '.join(missing)}")
    table = table.select(MANIFEST_SCHEMA.names)
    for field in MANIFEST_SCHEMA:
        if not field.nullable and table.column(field.name).null_count:
            raise ManifestError(f"{source}: column {field.name!r} has null values")
    try:
        table = table.cast(MANIFEST_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise ManifestError(f"{source}: cannot cast to the manifest schema: {error}") from error
    ids = table.column("image_id").to_pylist()
    if len(set(ids)) != len(ids):
        counts = Counter(ids)
        duplicates = sorted(image_id for image_id, count in counts.items() if count > 1)
        raise ManifestError(f"{source}: duplicate image_id(s): {', '.join(duplicates[:20])}")
    return table
