"""id_sets answers exactly as arrow's is_in and value_counts, on integer ids and on any others."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import given, settings
from hypothesis import strategies as st

from features.labels import id_sets

# Canonical integers, and near misses that must not equal them: "07", "+7", " 7", "7.0", "-7".
CANONICAL = st.integers(min_value=0, max_value=10**18 - 1).map(str)
NEAR_MISSES = st.sampled_from(["07", "+7", " 7", "7 ", "7.0", "-7", "", "00", "1e3", "x7"])
ANY_ID = st.one_of(CANONICAL, NEAR_MISSES, st.text(max_size=6))
SMALL_CANONICAL = st.integers(min_value=0, max_value=40).map(str)


def _arrow_repeated(ids: pa.Array) -> list[str]:
    """The independent answer: arrow's value_counts, as the code did before id_sets."""
    counted = pc.value_counts(ids)
    return sorted(
        counted.field("values").filter(pc.greater(counted.field("counts"), 1)).to_pylist()
    )


@settings(max_examples=200, deadline=None)
@given(
    ids=st.lists(st.one_of(SMALL_CANONICAL, ANY_ID), max_size=40),
    values=st.lists(st.one_of(SMALL_CANONICAL, ANY_ID, st.none()), max_size=40),
)
def test_is_in_equals_arrow_on_any_ids(ids: list[str], values: list[str | None]) -> None:
    id_array = pa.array(ids, pa.string())
    value_array = pa.array(values, pa.string())
    expected = pc.is_in(id_array, value_set=value_array).to_numpy(zero_copy_only=False)
    np.testing.assert_array_equal(id_sets.is_in(id_array, value_array), expected)


@settings(max_examples=200, deadline=None)
@given(
    ids=st.lists(SMALL_CANONICAL, max_size=60),
    values=st.lists(st.one_of(SMALL_CANONICAL, NEAR_MISSES, st.none()), max_size=40),
)
def test_is_in_on_integer_ids_ignores_near_misses_in_the_value_set(
    ids: list[str], values: list[str | None]
) -> None:
    """'07' in the value set must not match id '7': the int64 path takes only canonical values."""
    id_array = pa.array(ids, pa.string())
    assert id_sets.integer_keys(id_array) is not None  # this test is about the int64 path
    value_array = pa.array(values, pa.string())
    expected = [identifier in set(values) for identifier in ids]
    assert id_sets.is_in(id_array, value_array).tolist() == expected


@settings(max_examples=200, deadline=None)
@given(ids=st.lists(st.one_of(SMALL_CANONICAL, ANY_ID), max_size=60))
def test_repeated_equals_arrow_value_counts(ids: list[str]) -> None:
    id_array = pa.array(ids, pa.string())
    assert id_sets.repeated(id_array) == _arrow_repeated(id_array)
    chunked = pa.chunked_array([id_array[: len(ids) // 2], id_array[len(ids) // 2 :]])
    assert id_sets.repeated(chunked) == _arrow_repeated(id_array)


def test_integer_keys_only_for_canonical_ids() -> None:
    assert id_sets.integer_keys(pa.array(["0", "7", "953619", str(10**18 - 1)])).tolist() == [
        0,
        7,
        953619,
        10**18 - 1,
    ]
    for odd in ["07", "+7", " 7", "-7", "", str(10**18)]:
        assert id_sets.integer_keys(pa.array(["1", odd])) is None, odd
    assert id_sets.integer_keys(pa.array(["1", None], pa.string())) is None
    assert id_sets.integer_keys(pa.array([], pa.string())) is not None


def test_repeated_names_each_duplicate_once_in_string_order() -> None:
    ids = pa.array(["10", "9", "10", "9", "9", "100", "2"])
    assert id_sets.repeated(ids) == ["10", "9"]
