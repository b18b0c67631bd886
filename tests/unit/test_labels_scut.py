"""SCUT-FBP5500 parsing: the ratings workbook, All_labels.txt, the 60/40 split and the folds."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from openpyxl import Workbook

from features.labels import scut
from features.labels.builders import build_scut
from features.labels.parsing import SplitConfig
from pipelines.sample_datasets import scut_ratings, write_scut_zip
from schemas.errors import LabelError
from schemas.labels import LABELS_SCHEMA


def _write_ratings(path: Path, rows: list[list[object]]) -> None:
    workbook = Workbook()
    sheet = workbook.active
    sheet.append(["Rater", "Filename", "Rating", "original Rating"])
    for row in rows:
        sheet.append(row)
    workbook.save(path)


def test_ratings_workbook_gives_mean_std_and_rater_count(tmp_path: Path) -> None:
    path = tmp_path / "All_Ratings.xlsx"
    _write_ratings(path, [[1, "CF1.jpg", 2, None], [2, "CF1.jpg", 4, 3], [3, "CF1.jpg", 3, None],
                          [1, "AM7.jpg", 5, None], [2, "AM7.jpg", 4, None]])
    frame = scut.scores_from_ratings(scut.read_ratings(path)).set_index("image_id")
    # CF1: (2+4+3)/3 = 3, population std sqrt(2/3).  AM7: 4.5, std 0.5.
    assert frame.loc["CF1", "mos"] == pytest.approx(3.0)
    assert frame.loc["CF1", "std"] == pytest.approx((2 / 3) ** 0.5)
    assert frame.loc["CF1", "n_raters"] == 3
    assert frame.loc["AM7", "mos"] == pytest.approx(4.5)
    assert frame.loc["AM7", "std"] == pytest.approx(0.5)


def test_bad_rating_names_the_row(tmp_path: Path) -> None:
    path = tmp_path / "All_Ratings.xlsx"
    _write_ratings(path, [[1, "CF1.jpg", 2, None], [2, "CF1.jpg", "high", None]])
    with pytest.raises(LabelError, match="row 3: non-numeric Rating"):
        scut.read_ratings(path)


def test_score_lines_and_errors() -> None:
    assert scut.parse_score_lines("CF437.jpg 2.883333\n\nAM1.jpg 3\n", "t.txt") == {
        "CF437": 2.883333, "AM1": 3.0}
    with pytest.raises(LabelError, match=r"t\.txt:2: expected"):
        scut.parse_score_lines("CF1.jpg 2\nCF2.jpg\n", "t.txt")
    with pytest.raises(LabelError, match=r"t\.txt:1: non-numeric"):
        scut.parse_score_lines("CF1.jpg abc\n", "t.txt")


def test_subset_from_name() -> None:
    assert [scut.subset_of(i) for i in ("AF1", "AM20", "CF3", "CM4", "XX5")] == [
        "AF", "AM", "CF", "CM", None]


def test_sample_release_round_trip(tmp_path: Path) -> None:
    archive = write_scut_zip(tmp_path, n_per_subset=5, n_raters=4, seed=2, side=32)
    raw = tmp_path / "raw"
    with zipfile.ZipFile(archive) as handle:
        handle.extractall(raw)
    result = build_scut(raw, None, SplitConfig(seed=0, val_fraction=0.0))
    table = result.table.to_pandas().set_index("image_id")
    assert result.table.schema == LABELS_SCHEMA
    names = [f"{s}{i}" for s in ("AF", "AM", "CF", "CM") for i in range(1, 6)]
    _, ratings = scut_ratings(len(names), 4, 2)
    for index, image_id in enumerate(names):
        assert table.loc[image_id, "mos"] == pytest.approx(ratings[index].mean())
        assert table.loc[image_id, "std"] == pytest.approx(np.std(ratings[index]))
        assert table.loc[image_id, "subset"] == image_id[:2]
    assert (table["n_raters"] == 4).all()
    assert (table["mos"] - table["reference_mos"]).abs().max() < 1e-5
    assert any("0 differ" in note for note in result.report.notes)
    test_ids = scut.parse_score_lines(
        (raw / "train_test_files" / scut.SPLIT_DIR / "test.txt").read_text(), "x")
    assert set(table.index[table["split"] == "test"]) == set(test_ids)
    assert (table["split"] == "test").sum() == 8
    for fold in range(1, 6):
        column = table[f"fold_{fold}"]
        assert (column == "test").sum() == 4 and (column == "train").sum() == 16


def test_disagreement_with_all_labels_is_reported(tmp_path: Path) -> None:
    _write_ratings(tmp_path / "All_Ratings.xlsx",
                   [[1, "CF1.jpg", 2, None], [2, "CF1.jpg", 4, None]])
    (tmp_path / "All_labels.txt").write_text("CF1.jpg 3.5\n")
    result = build_scut(tmp_path, None, SplitConfig())
    assert any("1 differ by more than" in note and "0.5000" in note for note in result.report.notes)
