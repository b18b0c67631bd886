"""The download's AVA id list: malformed AVA.txt lines are skipped with a warning, as in labels."""

from __future__ import annotations

from pathlib import Path

import pytest

from features.download.fetch import FetchConfig
from features.download.sources import SourceRequest, ava_items
from schemas.errors import LabelError


def _request(tmp_path: Path, lines: list[str]) -> SourceRequest:
    listing = tmp_path / "AVA.txt"
    listing.write_text("\n".join(lines) + "\n")
    (tmp_path / "images").mkdir(exist_ok=True)
    return SourceRequest(tmp_path / "dest", str(tmp_path / "images"), str(listing), (), None,
                         FetchConfig())


def test_malformed_lines_are_skipped_naming_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lines = [f"{i} {100 + i} 1 1 1 1 1 1 1 1 1 1 0 0 1" for i in range(1, 201)]
    lines[41] = "42 142 1 1"
    items = ava_items(_request(tmp_path, lines))
    assert len(items) == 199 and "142" not in {item.image_id for item in items}
    assert any("AVA.txt:42: expected 15 fields, got 4" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "dest" / "raw" / "AVA.txt").read_text().count("\n") == 200  # kept whole


def test_a_list_that_is_mostly_malformed_fails_before_any_fetch(tmp_path: Path) -> None:
    with pytest.raises(LabelError, match=r"AVA.txt: 2 of 2 lines are malformed .*line\(s\) 1, 2"):
        ava_items(_request(tmp_path, ["image_id,score", "1,5.0"]))
