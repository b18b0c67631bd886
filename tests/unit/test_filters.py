"""Where-strings become Arrow expressions equal to the same filter written in Python."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from features.store.filters import parse_where
from schemas.errors import ConfigError

rows = st.lists(
    st.fixed_dictionaries(
        {
            "split": st.one_of(st.none(), st.sampled_from(["train", "test", "val"])),
            "width": st.integers(0, 1000),
            "status": st.sampled_from(["ok", "too_small", "missing"]),
        }
    ),
    max_size=30,
)


@given(rows, st.integers(0, 1000))
def test_compound_filter_matches_python(records, threshold) -> None:
    table = pa.Table.from_pylist(
        records,
        schema=pa.schema([("split", pa.string()), ("width", pa.int64()), ("status", pa.string())]),
    )
    text = (
        f"(split == 'test' or split is None) and width >= {threshold} "
        "and status in ['ok', 'missing']"
    )
    got = table.filter(parse_where(text, set(table.column_names))).to_pylist()
    expected = [
        r
        for r in records
        if (r["split"] == "test" or r["split"] is None)
        and r["width"] >= threshold
        and r["status"] in ["ok", "missing"]
    ]
    assert got == expected


def test_not_and_not_in() -> None:
    table = pa.table({"status": ["ok", "missing", "ok", "too_small"]})
    expression = parse_where("not status not in ['ok']", {"status"})
    assert table.filter(expression).column("status").to_pylist() == ["ok", "ok"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour == 'red'", "unknown column 'colour'"),
        ("status ==", "syntax error"),
        ("__import__('os').system('x') == 1", "left side must be a column"),
        ("status == other", "expected a literal"),
        ("1 < width < 3", "chain comparisons"),
    ],
)
def test_bad_filters_name_the_problem(text, message) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_where(
            text, {"status", "width", "other_col"} | ({"other"} if "other" in text else set())
        )
