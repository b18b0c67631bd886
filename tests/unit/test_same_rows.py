"""verify's streamed comparison of two batch streams equals Table.equals, whatever the batching."""

from __future__ import annotations

import itertools

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from features.store.verify_snapshot import same_rows

ROW = st.tuples(st.integers(0, 5), st.one_of(st.none(), st.sampled_from(["ok", "decode_error"])))


def _table(rows: list[tuple[int, str | None]]) -> pa.Table:
    return pa.table(
        {
            "row": pa.array([row for row, _ in rows], pa.int64()),
            "status": pa.array([status for _, status in rows], pa.string()),
        }
    )


def _batches(table: pa.Table, cuts: list[int]) -> list[pa.RecordBatch]:
    """table cut at the given offsets (empty batches included where cuts repeat)."""
    bounds = [0, *sorted(min(cut, table.num_rows) for cut in cuts), table.num_rows]
    return [
        table.slice(start, stop - start).combine_chunks().to_batches(max_chunksize=None)[0]
        if stop > start
        else pa.RecordBatch.from_pylist([], schema=table.schema)
        for start, stop in itertools.pairwise(bounds)
    ]


@settings(max_examples=300, deadline=None)
@given(
    left=st.lists(ROW, max_size=30),
    right=st.lists(ROW, max_size=30),
    left_cuts=st.lists(st.integers(0, 30), max_size=5),
    right_cuts=st.lists(st.integers(0, 30), max_size=5),
)
def test_same_rows_equals_table_equality(
    left: list[tuple[int, str | None]],
    right: list[tuple[int, str | None]],
    left_cuts: list[int],
    right_cuts: list[int],
) -> None:
    left_table, right_table = _table(left), _table(right)
    streamed = same_rows(_batches(left_table, left_cuts), _batches(right_table, right_cuts))
    assert streamed == left_table.equals(right_table)
    # the same rows cut differently are the same rows
    assert same_rows(_batches(left_table, left_cuts), _batches(left_table, right_cuts))


def test_a_longer_stream_or_another_type_differs() -> None:
    table = _table([(1, "ok"), (2, "ok")])
    assert not same_rows(_batches(table, [1]), _batches(table.slice(0, 1), []))
    as_int32 = table.cast(pa.schema([("row", pa.int32()), ("status", pa.string())]))
    assert not same_rows(_batches(table, []), _batches(as_int32, []))
    assert same_rows([], [])
