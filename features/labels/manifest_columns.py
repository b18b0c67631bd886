"""A few columns of a manifest, checked as read_manifest checks the whole of it.

The labels CLI needs only image_id and width. Reading just those keeps a large manifest's
uri and sha256 columns out of memory; the other columns are still checked (present, no
nulls where the schema forbids them, castable to it) from the file's metadata, reading a
column only when its statistics cannot tell.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from features import files
from features.labels import id_sets
from schemas.errors import ManifestError
from schemas.tables import MANIFEST_SCHEMA

DUPLICATES_NAMED = 20  # as conform_to_schema


def read_manifest_columns(path: str, columns: Sequence[str], flag: str = "--manifest") -> pa.Table:
    """Some columns of a manifest Parquet file, after read_manifest's checks of all of them.

    Args:
        path: local path or fsspec URL of the manifest.
        columns: the MANIFEST_SCHEMA columns to return.
        flag: the CLI flag named in errors.

    Returns:
        Those columns, cast to MANIFEST_SCHEMA's types.

    Raises:
        ManifestError: the file is missing or not a valid manifest (read_manifest's messages).
    """
    if not files.exists(path):
        raise ManifestError(f"{flag} {path}: no such file")
    # As files.read_parquet opens it, so a file that is not Parquet fails with its message.
    local = files.is_local(path)
    source: Any = files.native(path) if local else io.BytesIO(files.read_bytes(path))
    try:
        pq.read_table(source, columns=[])
    except Exception as error:  # pyarrow raises ArrowInvalid/OSError for non-Parquet input
        raise ManifestError(f"{flag} {path}: not a Parquet file ({error})") from error
    parquet = pq.ParquetFile(source)
    _check(parquet, path)
    schema = pa.schema([MANIFEST_SCHEMA.field(name) for name in columns])
    return parquet.read(columns=list(columns)).select(list(columns)).cast(schema)


def _check(parquet: pq.ParquetFile, source: str) -> None:
    """conform_to_schema's checks, in its order, one column in memory at a time."""
    names = parquet.schema_arrow.names
    missing = [name for name in MANIFEST_SCHEMA.names if name not in names]
    if missing:
        raise ManifestError(f"{source}: missing column(s) {', '.join(missing)}")
    for field in MANIFEST_SCHEMA:
        if not field.nullable and _null_count(parquet, field.name):
            raise ManifestError(f"{source}: column {field.name!r} has null values")
    for field in MANIFEST_SCHEMA:
        if parquet.schema_arrow.field(field.name).type != field.type:
            try:
                parquet.read(columns=[field.name]).column(0).cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as cast_error:
                raise ManifestError(
                    f"{source}: cannot cast to the schema: {cast_error}"
                ) from cast_error
    ids = parquet.read(columns=["image_id"]).column(0).cast(pa.string())
    repeated = id_sets.repeated(ids)
    if repeated:
        duplicates = repeated[:DUPLICATES_NAMED]
        raise ManifestError(f"{source}: duplicate image_id(s): {', '.join(duplicates)}")


def _null_count(parquet: pq.ParquetFile, name: str) -> int:
    """Nulls of a column: from the row groups' statistics, else by reading the column."""
    metadata = parquet.metadata
    leaves = [metadata.schema.column(i).path for i in range(metadata.num_columns)]
    if name in leaves:
        index = leaves.index(name)
        stats = [
            metadata.row_group(g).column(index).statistics for g in range(metadata.num_row_groups)
        ]
        if all(s is not None and s.has_null_count for s in stats):
            return sum(s.null_count for s in stats)
    return int(parquet.read(columns=[name]).column(0).null_count)
