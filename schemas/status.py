"""Per-row status values recorded in the feature index."""

from __future__ import annotations

from enum import StrEnum


class RowStatus(StrEnum):
    """Outcome of extracting one image; everything except OK leaves NaN features."""

    OK = "ok"
    MISSING = "missing"
    ZERO_BYTES = "zero_bytes"
    TRUNCATED = "truncated"
    DECODE_ERROR = "decode_error"
    TOO_SMALL = "too_small"
    DECOMPRESSION_BOMB = "decompression_bomb"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    READ_ERROR = "read_error"


FAILED_STATUSES = frozenset(status for status in RowStatus if status is not RowStatus.OK)
