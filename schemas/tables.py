"""Arrow schemas for the image manifest and the per-view feature index."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from schemas.errors import ManifestError, MLSPError

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


def conform_to_schema(
    table: pa.Table, schema: pa.Schema, source: str, error: type[MLSPError]
) -> pa.Table:
    """Check a table against a schema with unique image ids and cast it to that schema.

    Args:
        table: the table as read.
        schema: the target schema (must have an image_id column).
        source: a name for error messages (usually the file path).
        error: the job-level error class to raise.

    Returns:
        The table with exactly the schema's columns, in schema order and types.

    Raises:
        error: a column is missing, a non-nullable column has nulls, or ids repeat (named).
    """
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise error(f"{source}: missing column(s) {', '.join(missing)}")
    table = table.select(schema.names)
    for field in schema:
        if not field.nullable and table.column(field.name).null_count:
            raise error(f"{source}: column {field.name!r} has null values")
    try:
        table = table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as cast_error:
        raise error(f"{source}: cannot cast to the schema: {cast_error}") from cast_error
    counts = Counter(table.column("image_id").to_pylist())
    duplicates = sorted(image_id for image_id, count in counts.items() if count > 1)
    if duplicates:
        raise error(f"{source}: duplicate image_id(s): {', '.join(duplicates[:20])}")
    return table


def conform_manifest(table: pa.Table, source: str = "manifest") -> pa.Table:
    """conform_to_schema for MANIFEST_SCHEMA, raising ManifestError."""
    return conform_to_schema(table, MANIFEST_SCHEMA, source, ManifestError)
