"""AVA label parsing, MOS/std, splits and drops on handcrafted lines with hand-computed values."""

from __future__ import annotations

import math
from pathlib import Path
from unittest.mock import patch

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.labels import ava_text
from features.labels.builders import build_ava
from features.labels.parsing import (
    LabelReport,
    SplitConfig,
    assign_splits,
    ava_frame,
    parse_ava_text,
    unit_hash,
)
from schemas.errors import ConfigError, LabelError
from schemas.labels import LABELS_SCHEMA

# id 11: 2 votes of 5 and 2 of 7 -> MOS 6, std 1.  id 12: one vote of 10 -> MOS 10, std 0.
# id 13: votes 1..10 once each -> MOS 5.5, variance (385/10 - 30.25) = 8.25.  id 14: zero votes.
AVA_LINES = (
    "1 11 0 0 0 0 2 0 2 0 0 0 3 7 100\n"
    "2 12 0 0 0 0 0 0 0 0 0 1 0 0 101\n"
    "3 13 1 1 1 1 1 1 1 1 1 1 15 0 102\n"
    "4 14 0 0 0 0 0 0 0 0 0 0 1 1 103\n"
)


def _manifest(ids: list[str], widths: list[int | None]) -> pa.Table:
    return pa.table({"image_id": ids, "width": pa.array(widths, pa.int32())})


def test_mos_std_and_distribution_match_hand_values() -> None:
    report = LabelReport()
    frame = ava_frame(AVA_LINES, "AVA.txt", report).set_index("image_id")
    assert frame.loc["11", "mos"] == pytest.approx(6.0)
    assert frame.loc["11", "std"] == pytest.approx(1.0)
    assert frame.loc["11", "n_votes"] == 4
    assert frame.loc["12", "mos"] == pytest.approx(10.0)
    assert frame.loc["12", "std"] == pytest.approx(0.0)
    assert frame.loc["13", "mos"] == pytest.approx(5.5)
    assert frame.loc["13", "std"] == pytest.approx(math.sqrt(8.25))
    assert list(frame.loc["11", "distribution"]) == pytest.approx([0, 0, 0, 0, .5, 0, .5, 0, 0, 0])
    assert (frame.loc["11", "semantic_tag_1"], frame.loc["11", "challenge_id"]) == (3, 100)
    assert "14" not in frame.index
    assert report.dropped == {"zero_votes": 1}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 11 0 0 0 0 2 0 2 0 0 0 3 7\n", "AVA.txt:1: expected 15 fields, got 14"),
        ("\n1 11 0 0 0 0 x 0 2 0 0 0 3 7 100\n", "AVA.txt:2: non-numeric"),
        ("1 11 0 0 0 0 -2 0 2 0 0 0 3 7 100\n", "AVA.txt:1: negative"),
        ("1 11 0 0 0 0 2 0 2 0 0 0 3 7 99999999999999999999\n", "AVA.txt:1: count or tag too"),
        ("1 1\udcff 0 0 0 0 2 0 2 0 0 0 3 7 100\n", "AVA.txt:1: bytes that are not UTF-8"),
    ],
)
def test_malformed_lines_become_rows_naming_file_and_line(text: str, message: str) -> None:
    frame = parse_ava_text(text, "AVA.txt")
    assert len(frame) == 1 and frame["problem"][0].startswith(message)
    with pytest.raises(LabelError, match=f"1 of 1 lines are malformed.*{message}"):
        ava_frame(text, "AVA.txt", LabelReport())


def test_a_few_malformed_lines_are_dropped_with_reasons(caplog: pytest.LogCaptureFixture) -> None:
    good = [f"{i} {100 + i} 0 0 0 0 2 0 2 0 0 0 3 7 100" for i in range(1, 201)]
    lines = [*good[:9], "10 110 1 1", *good[10:49], "50 150 0 x 0 0 2 0 2 0 0 0 3 7 1", *good[50:]]
    report = LabelReport()
    frame = ava_frame("\n".join(lines) + "\n", "AVA.txt", report)
    assert len(frame) == 198 and "110" not in set(frame["image_id"])
    assert report.dropped == {"malformed_line": 2}
    assert report.examples["malformed_line"] == [
        "AVA.txt:10: expected 15 fields, got 4",
        "AVA.txt:50: non-numeric count or tag in '50 150 0 x 0 0 2 0 2 0 0 0 3 7 1'",
    ]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("AVA.txt:10: expected 15 fields" in message for message in warnings)
    with pytest.raises(LabelError, match=r"2 of 200 lines .* line\(s\) 10, 50; AVA.txt:10"):
        ava_frame("\n".join(lines), "AVA.txt", LabelReport(), max_malformed_share=0.005)


def _tokens() -> st.SearchStrategy[str]:
    plain = st.sampled_from(["0", "7", "12", "007", "123456789012345678"])
    odd = st.sampled_from(["+5", "1_0", "-1", "-0", "x", "1.0", ":", "/", "1234567890123456789",
                           "99999999999999999999"])  # ASCII: non-ASCII text skips the fast path
    return plain | odd


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(_tokens(), min_size=12, max_size=14) | st.just([]), max_size=12),
       st.sampled_from([" ", "\t", "  ", " \r ", "\x0b"]),
       st.sampled_from(["\n", "\n", "\r\n", "\r"]), st.integers(1, 50))
def test_fast_path_parses_exactly_like_the_per_line_path(
    rows: list[list[str]], sep: str, end: str, first_line: int
) -> None:
    """Odd tokens, separators and line ends: the vectorised path agrees with the reference."""
    lines = [sep.join([str(n), f"id{n}", *row]) if row else "" for n, row in enumerate(rows)]
    text = end.join(lines)
    fast = parse_ava_text(text, "AVA.txt", first_line)
    with patch.object(ava_text, "_parse_fast", return_value=None):
        slow = parse_ava_text(text, "AVA.txt", first_line)
    pd.testing.assert_frame_equal(fast, slow)


def test_build_ava_uses_official_test_list_and_drops_with_reasons(tmp_path: Path) -> None:
    (tmp_path / "AVA.txt").write_text(AVA_LINES + "5 11 0 0 0 0 0 0 0 0 0 1 0 0 104\n"
                                      "6 15 0 0 1 0 0 0 0 0 0 0 0 0 105\n"
                                      "7 16 0 0 1 0 0 0 0 0 0 0 0 0 106\n")
    (tmp_path / "generic_test.jpgl").write_text("12\n")
    manifest = _manifest(["12", "13", "14", "16"], [100, 100, 100, None])
    result = build_ava(tmp_path, manifest, SplitConfig(seed=3, val_fraction=0.0))
    table = result.table
    assert table.schema == LABELS_SCHEMA
    # 11 is duplicated (dropped), 14 has no votes, 15 is not in the manifest, 16 is undecodable.
    assert table.column("image_id").to_pylist() == ["12", "13"]
    assert table.column("split").to_pylist() == ["test", "train"]
    assert dict(result.report.dropped) == {"duplicate_id": 1, "zero_votes": 1,
                                           "missing_image": 1, "undecodable_image": 1}
    assert len(set(table.column("label_version").to_pylist())) == 1


def test_label_version_changes_with_inputs_and_parameters(tmp_path: Path) -> None:
    (tmp_path / "AVA.txt").write_text(AVA_LINES)
    first = build_ava(tmp_path, None, SplitConfig(seed=0)).table
    again = build_ava(tmp_path, None, SplitConfig(seed=0)).table
    reseeded = build_ava(tmp_path, None, SplitConfig(seed=1)).table
    (tmp_path / "AVA.txt").write_text(AVA_LINES.replace("3 7 100", "3 7 999"))
    edited = build_ava(tmp_path, None, SplitConfig(seed=0)).table
    versions = [t.column("label_version")[0].as_py() for t in (first, again, reseeded, edited)]
    assert versions[0] == versions[1]
    assert len(set(versions)) == 3


def test_seeded_split_follows_the_hash_rule() -> None:
    ids = [str(i) for i in range(400)]
    config = SplitConfig(seed=7, test_fraction=0.2, val_fraction=0.25)
    splits = assign_splits(ids, config)
    for image_id in ids:
        if unit_hash(7, "test", image_id) < 0.2:
            expected = "test"
        elif unit_hash(7, "val", image_id) < 0.25:
            expected = "val"
        else:
            expected = "train"
        assert splits[image_id] == expected
    counts = {name: list(splits.values()).count(name) for name in ("train", "val", "test")}
    assert 50 <= counts["test"] <= 110 and 40 <= counts["val"] <= 100


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text("0123456789ab", min_size=1, max_size=6), unique=True, max_size=30),
       st.integers(0, 10))
def test_split_is_independent_of_row_order(ids: list[str], seed: int) -> None:
    config = SplitConfig(seed=seed)
    assert assign_splits(ids, config) == assign_splits(list(reversed(ids)), config)


def test_split_config_round_trip_and_validation() -> None:
    config = SplitConfig(seed=4, test_fraction=0.3, val_fraction=0.05)
    assert SplitConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="--val-fraction"):
        SplitConfig(val_fraction=1.5)
    with pytest.raises(ConfigError, match="unknown"):
        SplitConfig.from_dict({"seed": 1, "colour": "red"})
