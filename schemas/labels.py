"""Arrow schemas and status values for label tables, download status tables and their versions."""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from typing import Any

import pyarrow as pa

from schemas.errors import LabelError
from schemas.tables import conform_to_schema

AVA_BINS = 10
N_FOLDS = 5
SPLITS = ("train", "val", "test")
FOLD_COLUMNS = tuple(f"fold_{index}" for index in range(1, N_FOLDS + 1))
RECALIBRATED_COLUMN = "mos_recalibrated"

LABELS_SCHEMA = pa.schema(
    [
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("mos", pa.float64(), nullable=False),
        pa.field("std", pa.float64(), nullable=True),
        pa.field("n_votes", pa.int64(), nullable=True),
        pa.field("n_raters", pa.int32(), nullable=True),
        pa.field("distribution", pa.list_(pa.float32()), nullable=True),
        pa.field("semantic_tag_1", pa.int32(), nullable=True),
        pa.field("semantic_tag_2", pa.int32(), nullable=True),
        pa.field("challenge_id", pa.int32(), nullable=True),
        pa.field("subset", pa.string(), nullable=True),
        pa.field("reference_mos", pa.float64(), nullable=True),
        pa.field("split", pa.string(), nullable=False),
        *[pa.field(name, pa.string(), nullable=True) for name in FOLD_COLUMNS],
        pa.field("label_version", pa.string(), nullable=False),
    ]
)

# A recalibrated table keeps every label column and adds the mapped score beside 'mos'.
RECALIBRATED_LABELS_SCHEMA = LABELS_SCHEMA.append(
    pa.field(RECALIBRATED_COLUMN, pa.float64(), nullable=False)
)

DOWNLOADS_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("http_status", pa.int32(), nullable=True),
        pa.field("error", pa.string(), nullable=True),
        pa.field("bytes", pa.int64(), nullable=True),
        pa.field("sha256", pa.string(), nullable=True),
        pa.field("attempts", pa.int32(), nullable=False),
    ]
)

PREDICTIONS_COLUMNS = ("image_id", "prediction")


class DownloadStatus(StrEnum):
    """Outcome of fetching one item; only OK and PRESENT leave a file on disk."""

    OK = "ok"
    PRESENT = "present"
    NOT_FOUND = "not_found"
    HTTP_ERROR = "http_error"
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    TRUNCATED = "truncated"
    SIZE_MISMATCH = "size_mismatch"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    DECODE_ERROR = "decode_error"
    REFUSED = "refused"
    WRITE_ERROR = "write_error"


SUCCESS_STATUSES = frozenset({DownloadStatus.OK, DownloadStatus.PRESENT})


class DropReason(StrEnum):
    """Why a label row was left out of the label table (counted in the summary, never silent)."""

    ZERO_VOTES = "zero_votes"
    MISSING_IMAGE = "missing_image"
    UNDECODABLE_IMAGE = "undecodable_image"
    DUPLICATE_ID = "duplicate_id"
    NOT_IN_SPLIT_LISTS = "not_in_split_lists"
    MALFORMED_LINE = "malformed_line"  # examples are 'file:line: what is wrong', not ids


def label_version(inputs: dict[str, str], parameters: dict[str, Any]) -> str:
    """Short, stable digest of the label inputs (name -> content sha256) and parameters.

    Args:
        inputs: input name mapped to the sha256 of its content.
        parameters: every parameter that changes the table (seed, fractions, calibration...).

    Returns:
        'lv-' followed by 16 hex characters.
    """
    text = json.dumps({"inputs": inputs, "parameters": parameters}, sort_keys=True, default=str)
    return "lv-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def conform_table(table: pa.Table, schema: pa.Schema, source: str) -> pa.Table:
    """conform_to_schema for LABELS_SCHEMA, RECALIBRATED_LABELS_SCHEMA or DOWNLOADS_SCHEMA.

    Raises:
        LabelError: a missing column, nulls in a non-nullable column, or repeated image ids.
    """
    return conform_to_schema(table, schema, source, LabelError)
