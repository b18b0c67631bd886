"""Label cleaning shared by all datasets, plus AVA and folder-CSV parsing into the labels schema."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa

from features.labels.ava_text import (
    DEFAULT_MAX_MALFORMED_SHARE,
    TAG_COLUMNS,
    VOTE_COLUMNS,
    drop_malformed,
    parse_ava_text,
)
from schemas.config_fields import reject_unknown_fields
from schemas.errors import ConfigError, LabelError
from schemas.labels import AVA_BINS, LABELS_SCHEMA, DropReason, label_version

LOGGER = logging.getLogger(__name__)
SHARE_COLUMNS = tuple(f"p_{i}" for i in range(1, AVA_BINS + 1))


@dataclass(frozen=True)
class SplitConfig:
    """How splits are assigned when the dataset has no official list for them.

    Attributes:
        seed: salt of the per-id hash that decides the split (order independent).
        test_fraction: share of ids sent to 'test' when no official test list is given.
        val_fraction: share of the training ids carved out as 'val'.
    """

    seed: int = 0
    test_fraction: float = 0.1
    val_fraction: float = 0.1

    def __post_init__(self) -> None:
        for name in ("test_fraction", "val_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"--{name.replace('_', '-')}: must be in [0, 1), got {value}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SplitConfig:
        """Inverse of to_dict.

        Raises:
            ConfigError: an unknown field or an invalid value.
        """
        reject_unknown_fields(cls, data, "split config")
        return cls(**data)


@dataclass
class LabelReport:
    """What happened to the input rows: kept count and drops by reason, with examples."""

    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def drop(self, reason: DropReason, image_ids: Iterable[str]) -> None:
        """Count dropped ids under a reason, keeping up to five examples.

        Args:
            reason: why they were dropped.
            image_ids: the dropped ids; for malformed lines, 'file:line: what is wrong'.
        """
        image_ids = list(image_ids)
        self.drop_count(reason, len(image_ids), image_ids[:5])

    def drop_count(self, reason: DropReason, count: int, examples: list[str]) -> None:
        """Count `count` dropped rows under a reason, keeping up to five examples.

        Args:
            reason: why they were dropped.
            count: how many were dropped (nothing is recorded when 0).
            examples: the first few of them (as drop's image_ids).
        """
        if count:
            self.dropped[reason.value] += count
            self.examples.setdefault(reason.value, []).extend(examples[:5])
            self.examples[reason.value] = self.examples[reason.value][:5]


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(url: str, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a local file or fsspec URL, read in chunks (never whole in memory)."""
    digest = hashlib.sha256()
    with fsspec.open(url, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def unit_hash(seed: int, salt: str, image_id: str) -> float:
    """Deterministic pseudo-uniform number in [0, 1) for one id (independent of row order)."""
    digest = hashlib.sha256(f"{seed}:{salt}:{image_id}".encode()).hexdigest()
    return int(digest[:16], 16) / float(1 << 64)


def assign_splits(
    image_ids: Iterable[str], config: SplitConfig, test_ids: frozenset[str] | None = None
) -> dict[str, str]:
    """Split per id: the official test list when given, else a seeded hash; val carved from train.

    Args:
        image_ids: ids to assign.
        config: seed and fractions.
        test_ids: the official test list, or None to draw test ids by hash.

    Returns:
        image id -> 'train' | 'val' | 'test'.
    """
    splits = {}
    for image_id in image_ids:
        if test_ids is not None:
            is_test = image_id in test_ids
        else:
            is_test = unit_hash(config.seed, "test", image_id) < config.test_fraction
        if is_test:
            splits[image_id] = "test"
        elif unit_hash(config.seed, "val", image_id) < config.val_fraction:
            splits[image_id] = "val"
        else:
            splits[image_id] = "train"
    return splits


def ava_scores(votes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MOS = sum(i * n_i) / sum(n_i), population std, vote counts and normalised distributions.

    Rows with zero votes get NaN scores and distributions (callers drop them).
    """
    votes = np.asarray(votes, dtype=np.float64)
    totals = votes.sum(axis=1)
    mos, second = np.zeros(len(votes)), np.zeros(len(votes))
    with np.errstate(invalid="ignore", divide="ignore"):
        distribution = votes / totals[:, None]
    # Element-wise per grade (not a BLAS product), so a row's value never depends on where it
    # sits in its block: the pandas and dask engines give bit-identical scores.
    for grade, share in enumerate(distribution.T, start=1):
        mos += grade * share
        second += grade * grade * share
    variance = second - mos**2
    return mos, np.sqrt(np.clip(variance, 0.0, None)), totals.astype(np.int64), distribution


def parse_split_list(text: str) -> frozenset[str]:
    """Ids of a .jpgl split file (one id per line, blank lines ignored)."""
    return frozenset(line.strip() for line in text.splitlines() if line.strip())


def drop_duplicates(frame: pd.DataFrame, report: LabelReport) -> pd.DataFrame:
    """Drop every row whose image_id occurs more than once (ambiguous labels)."""
    repeated = frame["image_id"].duplicated(keep=False)
    report.drop(DropReason.DUPLICATE_ID, sorted(set(frame.loc[repeated, "image_id"])))
    return frame.loc[~repeated]


def drop_by_manifest(
    frame: pd.DataFrame, manifest: pa.Table | None, report: LabelReport
) -> pd.DataFrame:
    """Drop ids missing from the manifest, and those whose image header could not be read."""
    if manifest is None:
        return frame
    present = manifest.column("image_id").to_pylist()
    widths = manifest.column("width").to_pylist()
    undecodable = {
        image_id for image_id, width in zip(present, widths, strict=True) if width is None
    }
    missing = ~frame["image_id"].isin(set(present))
    report.drop(DropReason.MISSING_IMAGE, frame.loc[missing, "image_id"])
    frame = frame.loc[~missing]
    broken = frame["image_id"].isin(undecodable)
    report.drop(DropReason.UNDECODABLE_IMAGE, frame.loc[broken, "image_id"])
    return frame.loc[~broken]


def score_ava(raw: pd.DataFrame) -> pd.DataFrame:
    """Parsed AVA rows -> image_id, mos, std, n_votes, p_1..p_10 (float32), tags, challenge,
    line and problem (malformed lines are kept, with NaN scores, for finish_ava to drop).

    Row-wise only, so it can run on any block of rows (the dask engine maps it over partitions).
    """
    mos, std, totals, distribution = ava_scores(raw[list(VOTE_COLUMNS)].to_numpy())
    columns: dict[str, Any] = {
        "image_id": raw["image_id"].array,
        "mos": mos,
        "std": std,
        "n_votes": totals,
    }
    columns.update(zip(SHARE_COLUMNS, distribution.astype(np.float32).T, strict=True))
    columns.update({name: raw[name].to_numpy() for name in (*TAG_COLUMNS, "line", "problem")})
    return pd.DataFrame(columns, index=raw.index)


def finish_ava(
    scored: pd.DataFrame,
    report: LabelReport,
    source: str,
    max_malformed_share: float = DEFAULT_MAX_MALFORMED_SHARE,
) -> pd.DataFrame:
    """Scored AVA rows of a whole file -> label columns, dropping malformed lines, duplicate
    ids and zero votes (in that order: a malformed line's id is no duplicate).

    Args:
        scored: score_ava's rows of the whole file, in line order.
        report: receives the drops.
        source: file name used in errors.
        max_malformed_share: largest tolerated share of malformed lines (see drop_malformed).

    Returns:
        Label columns of the kept rows.

    Raises:
        LabelError: too many malformed lines (probably not an AVA.txt).
    """
    scored, problems = drop_malformed(scored.reset_index(drop=True), source, max_malformed_share)
    report.drop(DropReason.MALFORMED_LINE, problems)
    scored = drop_duplicates(scored, report)
    zero = scored["n_votes"].to_numpy() == 0
    report.drop(DropReason.ZERO_VOTES, scored.loc[zero, "image_id"])
    kept = scored.loc[~zero]
    return pd.DataFrame(
        {
            "image_id": kept["image_id"].to_numpy(dtype=object),
            "mos": kept["mos"].to_numpy(),
            "std": kept["std"].to_numpy(),
            "n_votes": kept["n_votes"].to_numpy(),
            "distribution": list(kept[list(SHARE_COLUMNS)].to_numpy(dtype=np.float32)),
            **{name: kept[name].to_numpy() for name in TAG_COLUMNS},
        }
    )


def ava_frame(
    text: str,
    source: str,
    report: LabelReport,
    max_malformed_share: float = DEFAULT_MAX_MALFORMED_SHARE,
) -> pd.DataFrame:
    """AVA.txt contents -> label columns (before manifest checks and splits).

    Raises:
        LabelError: too many malformed lines (probably not an AVA.txt).
    """
    return finish_ava(score_ava(parse_ava_text(text, source)), report, source, max_malformed_share)


def folder_frame(text: str, source: str, report: LabelReport) -> pd.DataFrame:
    """CSV 'image_id,score[,split]' -> label columns; a given split column is kept.

    Raises:
        LabelError: missing columns, an empty id, or a non-numeric score (naming the line).
    """
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or not {"image_id", "score"} <= set(reader.fieldnames):
        raise LabelError(
            f"{source}: needs columns image_id,score[,split] (found {reader.fieldnames})"
        )
    ids, scores, splits = [], [], []
    for number, record in enumerate(reader, start=2):
        image_id = (record.get("image_id") or "").strip()
        if not image_id:
            raise LabelError(f"{source}:{number}: empty image_id")
        try:
            score = float(record.get("score") or "")
        except ValueError:
            raise LabelError(
                f"{source}:{number}: non-numeric score {record.get('score')!r}"
            ) from None
        if not np.isfinite(score):
            raise LabelError(f"{source}:{number}: score is not finite")
        ids.append(image_id)
        scores.append(score)
        splits.append((record.get("split") or "").strip() or None)
    frame = pd.DataFrame({"image_id": ids, "mos": scores, "given_split": splits})
    return drop_duplicates(frame, report)


def finalize_labels(
    frame: pd.DataFrame, dataset: str, splits: Mapping[str, str], version: str
) -> pa.Table:
    """Assemble a LABELS_SCHEMA table ordered by image_id, filling absent columns with nulls."""
    frame = frame.sort_values("image_id", kind="stable").reset_index(drop=True)
    count = len(frame)
    columns: dict[str, Any] = {}
    for schema_field in LABELS_SCHEMA:
        name = schema_field.name
        if name == "dataset":
            columns[name] = [dataset] * count
        elif name == "split":
            columns[name] = [splits[image_id] for image_id in frame["image_id"]]
        elif name == "label_version":
            columns[name] = [version] * count
        elif name in frame.columns:
            columns[name] = [None if _is_null(value) else value for value in frame[name]]
        else:
            columns[name] = [None] * count
    return pa.table(columns, schema=LABELS_SCHEMA)


def _is_null(value: Any) -> bool:
    return not isinstance(value, (list, np.ndarray)) and pd.isna(value)


def version_for(inputs: Mapping[str, bytes], dataset: str, parameters: Mapping[str, Any]) -> str:
    """label_version of a table built from these raw inputs and parameters."""
    digests = {name: sha256_bytes(data) for name, data in sorted(inputs.items())}
    return label_version(digests, {"dataset": dataset, **parameters})
