"""SCUT-FBP5500 release parsing: All_Ratings.xlsx, All_labels.txt and the split/fold files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from schemas.errors import LabelError
from schemas.labels import N_FOLDS

LOGGER = logging.getLogger(__name__)
RATINGS_FILE = "All_Ratings.xlsx"
ALL_LABELS_FILE = "All_labels.txt"
SPLIT_DIR = "split_of_60%training and 40%testing"
FOLDS_DIR = "5_folders_cross_validations_files"
RATING_COLUMNS = ("Rater", "Filename", "Rating")
SUBSETS = ("AF", "AM", "CF", "CM")
AGREEMENT_TOLERANCE = 0.01


def image_id_of(filename: str) -> str:
    """'CF437.jpg' -> 'CF437'."""
    return Path(filename.strip()).stem


def subset_of(image_id: str) -> str | None:
    """AF/AM/CF/CM from the id's prefix (Asian/Caucasian, female/male), None if unknown."""
    prefix = image_id[:2].upper()
    return prefix if prefix in SUBSETS else None


def read_ratings(path: Path) -> pd.DataFrame:
    """Rater, Filename, Rating rows of All_Ratings.xlsx (first sheet, header on row 1).

    Raises:
        LabelError: a missing column, an empty file name or a non-numeric rating (with row number).
    """
    from openpyxl import load_workbook

    try:
        workbook = load_workbook(path, read_only=True, data_only=True)
    except Exception as error:  # openpyxl raises zipfile/KeyError/InvalidFileException
        raise LabelError(f"{path}: not a readable xlsx workbook ({error})") from error
    try:
        rows = workbook.worksheets[0].iter_rows(values_only=True)
        header = [str(cell).strip() if cell is not None else "" for cell in next(rows, ())]
        missing = [name for name in RATING_COLUMNS if name not in header]
        if missing:
            raise LabelError(f"{path}: missing column(s) {missing} (found {header})")
        index = {name: header.index(name) for name in RATING_COLUMNS}
        records = [
            _rating_record(row, index, path, number)
            for number, row in enumerate(rows, start=2)
            if any(c is not None for c in row)
        ]
    finally:
        workbook.close()
    return pd.DataFrame(records, columns=list(RATING_COLUMNS))


def _rating_record(
    row: tuple[object, ...], index: dict[str, int], path: Path, number: int
) -> tuple[str, str, float]:
    filename = str(row[index["Filename"]] or "").strip()
    if not filename:
        raise LabelError(f"{path}:row {number}: empty Filename")
    try:
        rating = float(row[index["Rating"]])  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise LabelError(
            f"{path}:row {number}: non-numeric Rating {row[index['Rating']]!r}"
        ) from None
    if not np.isfinite(rating):
        raise LabelError(f"{path}:row {number}: Rating is not finite")
    return str(row[index["Rater"]]), filename, rating


def scores_from_ratings(ratings: pd.DataFrame) -> pd.DataFrame:
    """Per image: MOS (mean over raters), population std and number of raters."""
    grouped = ratings.assign(image_id=ratings["Filename"].map(image_id_of)).groupby("image_id")
    frame = (
        grouped["Rating"]
        .agg(mos="mean", std=lambda r: float(np.std(r, ddof=0)), n_raters="count")
        .reset_index()
    )
    return frame


def parse_score_lines(text: str, source: str) -> dict[str, float]:
    """Lines 'CF437.jpg 2.883333' -> {'CF437': 2.883333}.

    Raises:
        LabelError: a line without exactly two fields or with a non-numeric score.
    """
    scores: dict[str, float] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise LabelError(f"{source}:{number}: expected 'filename score', got {line.strip()!r}")
        try:
            scores[image_id_of(fields[0])] = float(fields[1])
        except ValueError:
            raise LabelError(f"{source}:{number}: non-numeric score {fields[1]!r}") from None
    return scores


def find_file(root: Path, name: str) -> Path | None:
    """First file or directory called `name` under root (sorted walk), or None."""
    if (root / name).exists():
        return root / name
    matches = sorted(root.rglob(name))
    return matches[0] if matches else None


def read_official_split(root: Path) -> dict[str, str]:
    """id -> 'train'/'test' from the 60/40 files; empty when they are absent."""
    directory = find_file(root, SPLIT_DIR)
    if directory is None:
        return {}
    splits: dict[str, str] = {}
    for split in ("train", "test"):
        path = directory / f"{split}.txt"
        if path.is_file():
            splits.update(dict.fromkeys(parse_score_lines(path.read_text(), str(path)), split))
    return splits


def read_folds(root: Path) -> dict[int, dict[str, str]]:
    """fold k -> (id -> 'train'/'test') from cross_validation_k/{train,test}_k.txt."""
    directory = find_file(root, FOLDS_DIR)
    folds: dict[int, dict[str, str]] = {}
    if directory is None:
        return folds
    for fold in range(1, N_FOLDS + 1):
        assignment: dict[str, str] = {}
        for split in ("train", "test"):
            path = directory / f"cross_validation_{fold}" / f"{split}_{fold}.txt"
            if path.is_file():
                assignment.update(
                    dict.fromkeys(parse_score_lines(path.read_text(), str(path)), split)
                )
        if assignment:
            folds[fold] = assignment
    return folds


def agreement(frame: pd.DataFrame, reference: dict[str, float]) -> str:
    """One-line comparison of computed MOS with All_labels.txt (count over tolerance, max diff)."""
    compared = frame.loc[frame["image_id"].isin(set(reference))]
    if compared.empty:
        return f"{ALL_LABELS_FILE}: no overlapping ids to compare"
    difference = (compared["mos"] - compared["image_id"].map(reference)).abs()
    disagree = int((difference > AGREEMENT_TOLERANCE).sum())
    return (
        f"{ALL_LABELS_FILE}: {len(compared)} ids compared, {disagree} differ by more than "
        f"{AGREEMENT_TOLERANCE} (max |diff| {difference.max():.4f}, "
        f"mean {difference.mean():.4f})"
    )
