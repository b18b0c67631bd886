"""Per-dataset label builders (AVA, SCUT-FBP5500, folder CSV), selected through a registry."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa

from features import files
from features.labels import scut
from features.labels.ava_blocks import AvaRows
from features.labels.ava_labels import AvaLabels, SplitLists, ava_labels, split_list_ids
from features.labels.ava_text import DEFAULT_MAX_MALFORMED_SHARE, check_malformed
from features.labels.engines import LABEL_ENGINES, EngineOptions, choose_engine
from features.labels.parsing import (
    LabelReport,
    SplitConfig,
    assign_splits,
    drop_by_manifest,
    drop_duplicates,
    finalize_labels,
    folder_frame,
    sha256_bytes,
    sha256_file,
    version_for,
)
from schemas.errors import LabelError
from schemas.labels import FOLD_COLUMNS, SPLITS, DropReason, label_version

LOGGER = logging.getLogger(__name__)
AVA_FILE = "AVA.txt"
AVA_TEST_LIST = "generic_test.jpgl"
AVA_TRAIN_LIST = "generic_ls_train.jpgl"
FOLDER_LABELS_FILE = "labels.csv"


@dataclass(frozen=True)
class LabelResult:
    """A built label table and the report of what was kept and dropped."""

    table: pa.Table
    report: LabelReport


LabelBuilder = Callable[[Path, "pa.Table | None", SplitConfig], LabelResult]


def _required(raw_dir: Path, name: str) -> Path:
    path = scut.find_file(raw_dir, name)
    if path is None or not path.is_file():
        raise LabelError(f"--raw {raw_dir}: no {name} found")
    return path


def locate(raw: str, name: str) -> str | None:
    """First file or folder called `name` under raw (a local folder or an fsspec URL), or None."""
    if files.is_local(raw):
        found = scut.find_file(Path(files.native(raw)), name)
        return None if found is None else str(found)
    fs, inner = files.filesystem(raw)
    direct = f"{inner.rstrip('/')}/{name}"
    matches = [direct] if fs.exists(direct) else sorted(fs.glob(f"{inner.rstrip('/')}/**/{name}"))
    return str(fs.unstrip_protocol(matches[0])) if matches else None


def _is_file(url: str) -> bool:
    fs, inner = files.filesystem(url)
    return bool(fs.isfile(inner))


def _ava_lists(raw: str, digests: dict[str, str]) -> SplitLists:
    """Official split lists found under raw (their digests are added to digests)."""
    lists: dict[str, pa.Array] = {}
    for name in (AVA_TEST_LIST, AVA_TRAIN_LIST):
        url = locate(raw, name)
        if url is not None and _is_file(url):
            data = files.read_bytes(url)
            digests[name] = sha256_bytes(data)
            lists[name] = split_list_ids(data)
    return SplitLists(lists.get(AVA_TEST_LIST), lists.get(AVA_TRAIN_LIST))


def _read_ava(
    raw: str, options: EngineOptions, report: LabelReport, max_malformed_share: float
) -> tuple[str, AvaRows]:
    """(URL of AVA.txt under raw, its well-formed rows) read with the chosen engine.

    Raises:
        LabelError: no AVA.txt, or too many malformed lines (see check_malformed).
    """
    ava_url = locate(raw, AVA_FILE)
    if ava_url is None or not _is_file(ava_url):
        raise LabelError(f"--raw {raw}: no {AVA_FILE} found")
    engine = choose_engine(ava_url, options)
    LOGGER.info("%s: %s engine", ava_url, engine)
    rows = AvaRows.join(LABEL_ENGINES[engine](ava_url, ava_url, options.blocksize))
    check_malformed(rows.malformed, rows.rows, ava_url, max_malformed_share)
    malformed = rows.malformed
    report.drop_count(DropReason.MALFORMED_LINE, malformed.count, malformed.problems)
    return ava_url, rows


def read_ava_labels(
    raw_dir: Path | str,
    manifest: pa.Table | None,
    config: SplitConfig,
    options: EngineOptions | None = None,
    max_malformed_share: float = DEFAULT_MAX_MALFORMED_SHARE,
) -> AvaLabels:
    """AVA labels as build_ava builds them, kept compact for writing batch by batch.

    Args:
        raw_dir: folder (local path or fsspec URL) holding AVA.txt and the optional split lists.
        manifest: image_id and width of the images; ids missing from it are dropped (None =
            no check).
        config: seed and fractions of the hash splits.
        options: pandas or dask engine and block size for AVA.txt (None = auto); the rows are
            the same.
        max_malformed_share: largest tolerated share of malformed lines, in [0, 1).

    Returns:
        The kept rows in image_id order, with their splits, label_version and report.

    Raises:
        LabelError: AVA.txt missing, or more than max_malformed_share of its lines malformed.
    """
    report, raw = LabelReport(), str(raw_dir)
    ava_url, rows = _read_ava(raw, options or EngineOptions(), report, max_malformed_share)
    digests = {AVA_FILE: sha256_file(ava_url)}
    lists = _ava_lists(raw, digests)
    if lists.test is None:
        report.notes.append(
            f"no {AVA_TEST_LIST}: test split drawn by hash "
            f"(seed {config.seed}, fraction {config.test_fraction})"
        )
    version = label_version(digests, {"dataset": "ava", **config.to_dict()})
    return ava_labels(rows, lists, manifest, config, version, report)


def build_ava(
    raw_dir: Path | str,
    manifest: pa.Table | None,
    config: SplitConfig,
    options: EngineOptions | None = None,
    max_malformed_share: float = DEFAULT_MAX_MALFORMED_SHARE,
) -> LabelResult:
    """AVA labels: MOS/std/n_votes/distribution, tags, challenge, official or seeded splits.

    Malformed lines of AVA.txt are dropped (reason malformed_line, logged as warnings) while
    they are at most max_malformed_share of its non-blank lines; beyond that the file is
    probably not an AVA.txt and nothing is written. The whole table is built in memory; the
    CLI writes read_ava_labels' batches instead.

    Args:
        raw_dir: folder (local path or fsspec URL) holding AVA.txt and the optional split lists.
        manifest: the image manifest; ids missing from it are dropped (None = no check).
        config: seed and fractions of the hash splits.
        options: pandas or dask engine for AVA.txt (None = auto); the table is the same.
        max_malformed_share: largest tolerated share of malformed lines, in [0, 1).

    Returns:
        The label table and the report of kept and dropped rows.

    Raises:
        LabelError: AVA.txt missing, or more than max_malformed_share of its lines malformed.
    """
    labels = read_ava_labels(raw_dir, manifest, config, options, max_malformed_share)
    return LabelResult(labels.table(), labels.report)


def build_folder(raw_dir: Path, manifest: pa.Table | None, config: SplitConfig) -> LabelResult:
    """Folder labels from labels.csv (image_id,score[,split]); missing splits are drawn by hash.

    Raises:
        LabelError: labels.csv missing or malformed, or an unknown split name.
    """
    report = LabelReport()
    path = _required(raw_dir, FOLDER_LABELS_FILE)
    data = path.read_bytes()
    frame = folder_frame(data.decode("utf-8"), str(path), report)
    frame = drop_by_manifest(frame, manifest, report)
    drawn = assign_splits(frame["image_id"], config)
    given = dict(zip(frame["image_id"], frame["given_split"], strict=True))
    unknown = sorted({split for split in given.values() if split not in (None, *SPLITS)})
    if unknown:
        raise LabelError(f"{path}: unknown split value(s) {unknown}; use train, val or test")
    splits = {image_id: given[image_id] or drawn[image_id] for image_id in frame["image_id"]}
    version = version_for({FOLDER_LABELS_FILE: data}, "folder", config.to_dict())
    report.kept = len(frame)
    return LabelResult(finalize_labels(frame, "folder", splits, version), report)


def build_scut(raw_dir: Path, manifest: pa.Table | None, config: SplitConfig) -> LabelResult:
    """SCUT-FBP5500 labels: rater-mean MOS, std, n_raters, subset, 60/40 split, folds 1..5.

    Raises:
        LabelError: All_Ratings.xlsx missing or malformed.
    """
    report = LabelReport()
    ratings_path = _required(raw_dir, scut.RATINGS_FILE)
    inputs = {scut.RATINGS_FILE: ratings_path.read_bytes()}
    frame = scut.scores_from_ratings(scut.read_ratings(ratings_path))
    frame = drop_duplicates(frame, report)
    frame["subset"] = frame["image_id"].map(scut.subset_of)
    reference_path = scut.find_file(raw_dir, scut.ALL_LABELS_FILE)
    if reference_path is not None and reference_path.is_file():
        inputs[scut.ALL_LABELS_FILE] = reference_path.read_bytes()
        reference = scut.parse_score_lines(
            inputs[scut.ALL_LABELS_FILE].decode("utf-8"), str(reference_path)
        )
        frame["reference_mos"] = frame["image_id"].map(reference)
        report.notes.append(scut.agreement(frame, reference))
    frame = drop_by_manifest(frame, manifest, report)
    splits = _scut_splits(raw_dir, frame, config, report)
    for fold, assignment in scut.read_folds(raw_dir).items():
        frame[FOLD_COLUMNS[fold - 1]] = frame["image_id"].map(assignment)
    parameters = {**config.to_dict(), "split_files": _split_file_digests(raw_dir)}
    version = version_for(inputs, "scut-fbp5500", parameters)
    report.kept = len(frame)
    return LabelResult(finalize_labels(frame, "scut-fbp5500", splits, version), report)


def _scut_splits(
    raw_dir: Path, frame: pd.DataFrame, config: SplitConfig, report: LabelReport
) -> dict[str, str]:
    official = scut.read_official_split(raw_dir)
    if not official:
        report.notes.append("no 60/40 split files: splits drawn by hash")
        return assign_splits(frame["image_id"], config)
    test_ids = frozenset(i for i, split in official.items() if split == "test")
    splits = assign_splits(frame["image_id"], config, test_ids)
    outside = sorted(set(frame["image_id"]) - set(official))
    if outside:
        report.notes.append(f"{len(outside)} id(s) in no 60/40 file were assigned to train/val")
    return splits


def _split_file_digests(raw_dir: Path) -> dict[str, str]:
    found = {}
    for name in (scut.SPLIT_DIR, scut.FOLDS_DIR):
        directory = scut.find_file(raw_dir, name)
        if directory is not None and directory.is_dir():
            for path in sorted(directory.rglob("*.txt")):
                found[str(path.relative_to(directory.parent))] = sha256_bytes(path.read_bytes())
    return found


LABEL_BUILDERS: dict[str, LabelBuilder] = {
    "ava": build_ava,
    "scut-fbp5500": build_scut,
    "folder": build_folder,
}
