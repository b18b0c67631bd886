"""Membership and duplicates of image ids, through int64 keys when every id is a canonical integer.

Arrow's hash kernels (is_in, value_counts) build a table of about 65 bytes per distinct string:
17 MB for AVA's 255,530 ids, held by the allocator after the kernel returns. AVA's ids are
decimal integers, so the same answers come from sorted int64 keys at 8 bytes an id. An id is
canonical when it round-trips exactly ("7", not "07", "+7" or " 7"), which makes the key one to
one with the string; any other id sends the call down arrow's path, with the same result.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Decimal integers without sign, spaces or leading zeros, of at most 18 digits (< 2**63).
CANONICAL_INTEGER = r"^(0|[1-9][0-9]{0,17})$"


def _canonical(ids: pa.Array) -> pa.Array:
    """Boolean array: which ids are canonical integers (null where the id is null)."""
    return pc.match_substring_regex(ids, CANONICAL_INTEGER)


def integer_keys(ids: pa.Array) -> np.ndarray | None:
    """The ids as int64 keys when every one is a canonical integer, else None.

    Args:
        ids: string ids.

    Returns:
        One int64 per id, or None when an id is null or not a canonical integer.
    """
    if ids.null_count:
        return None
    if len(ids) and not pc.all(_canonical(ids)).as_py():
        return None
    return np.asarray(pc.cast(ids, pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)


def is_in(ids: pa.Array, value_set: pa.Array) -> np.ndarray:
    """Which ids occur in value_set, as pc.is_in answers it (nulls never occur in ids here).

    Args:
        ids: string ids without nulls.
        value_set: string ids to look for.

    Returns:
        A boolean mask over ids.
    """
    keys = integer_keys(ids)
    if keys is None:
        return np.asarray(pc.is_in(ids, value_set=value_set).to_numpy(zero_copy_only=False))
    # A value that is not a canonical integer equals no canonical id: leaving it out is exact.
    values = value_set.filter(_canonical(value_set))
    return np.isin(keys, pc.cast(values, pa.int64()).to_numpy(zero_copy_only=False))


def repeated(ids: pa.Array) -> list[str]:
    """The ids that occur more than once, each named once, in string order.

    Args:
        ids: string ids without nulls.

    Returns:
        The repeated ids, sorted as Python sorts strings.
    """
    keys = integer_keys(ids)
    if keys is None:
        counted = pc.value_counts(ids)
        found = counted.field("values").filter(pc.greater(counted.field("counts"), 1))
        return sorted(found.to_pylist())
    ordered = np.sort(keys)
    twice = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    return sorted(str(int(key)) for key in twice)
