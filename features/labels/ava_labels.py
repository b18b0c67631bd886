"""The AVA label table from a file's compact rows: drops, splits and id-ordered record batches.

Drops come in the order, and with the counts and examples, of the whole-file path
(parsing.finish_ava, then ids in neither official list, then parsing.drop_by_manifest):
duplicate ids, zero votes, unlisted ids, missing and undecodable images. Scores are computed
per output batch from the kept rows' counts, so the whole table is never in memory at once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.labels import id_sets
from features.labels.ava_blocks import AvaRows
from features.labels.parsing import (
    LabelReport,
    SplitConfig,
    assign_splits,
    ava_scores,
    parse_split_list,
)
from schemas.labels import AVA_BINS, LABELS_SCHEMA, DropReason

BATCH_ROWS = 1 << 14  # rows per record batch (and Parquet row group) of the output
SPLIT_NAMES = ("train", "val", "test")
_EXAMPLES = 5


@dataclass(frozen=True)
class SplitLists:
    """AVA's official split lists (generic_test.jpgl, generic_ls_train.jpgl), None if absent."""

    test: pa.Array | None = None
    train: pa.Array | None = None

    @property
    def listed(self) -> pa.Array | None:
        """Ids in either list when both are given (others are dropped), else None."""
        if self.test is None or self.train is None:
            return None
        return pa.concat_arrays([self.test, self.train])


@dataclass(frozen=True)
class AvaLabels:
    """Kept AVA rows in image_id order, ready to be written batch by batch.

    Attributes:
        rows: the file's well-formed rows (kept or not).
        order: indices into rows of the kept ones, in image_id order.
        splits: index into SPLIT_NAMES of each kept row's split (in that order).
        version: the label_version of every row.
        report: what was kept and dropped.
    """

    rows: AvaRows
    order: np.ndarray
    splits: np.ndarray
    version: str
    report: LabelReport

    @property
    def num_rows(self) -> int:
        """Rows of the table."""
        return len(self.order)

    def split_counts(self) -> Counter[str]:
        """Rows per split name (only the splits that occur)."""
        counted = np.bincount(self.splits, minlength=len(SPLIT_NAMES))
        return Counter({name: int(n) for name, n in zip(SPLIT_NAMES, counted, strict=True) if n})

    def batches(self, size: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """The table as LABELS_SCHEMA record batches of up to `size` rows, in image_id order."""
        for start in range(0, self.num_rows, size):
            index = self.order[start : start + size]
            yield self._batch(
                self.rows.ids.take(index),
                self.rows.counts[index],
                self.splits[start : start + size],
            )

    def table(self) -> pa.Table:
        """The whole table (small inputs and tests; the CLI writes batches)."""
        return pa.Table.from_batches(list(self.batches()), schema=LABELS_SCHEMA)

    def _batch(self, ids: pa.Array, counts: np.ndarray, splits: np.ndarray) -> pa.RecordBatch:
        count = len(ids)
        mos, std, totals, distribution = whole_file_scores(counts, self.rows.rows)
        offsets = np.arange(0, AVA_BINS * count + 1, AVA_BINS, dtype=np.int32)
        columns = {
            "dataset": pa.array(["ava"] * count, pa.string()),
            "image_id": ids,
            "mos": pa.array(mos, pa.float64()),
            "std": pa.array(std, pa.float64()),
            "n_votes": pa.array(totals, pa.int64()),
            "distribution": pa.ListArray.from_arrays(
                pa.array(offsets), pa.array(distribution.astype(np.float32).ravel())
            ),
            "split": pc.take(pa.array(SPLIT_NAMES, pa.string()), pa.array(splits)),
            "label_version": pa.array([self.version] * count, pa.string()),
        }
        for offset, name in enumerate(("semantic_tag_1", "semantic_tag_2", "challenge_id")):
            # Through Python ints, as finalize_labels: an id beyond int32 fails the same way.
            columns[name] = pa.array(counts[:, AVA_BINS + offset].tolist(), pa.int32())
        arrays = [columns.get(f.name, pa.nulls(count, f.type)) for f in LABELS_SCHEMA]
        return pa.RecordBatch.from_arrays(arrays, schema=LABELS_SCHEMA)


def whole_file_scores(
    counts: np.ndarray, file_rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ava_scores of some rows, bit for bit as score_ava computed them on the whole file.

    score_ava took the votes of all the file's non-blank lines from a frame: int64 in Fortran
    order, whose rows numpy sums column by column, except a single row (C-contiguous too),
    which it sums pairwise. The same layout gives the same sums: Fortran order, and a lone row
    of a longer file padded with a zero row.

    Args:
        counts: the rows' votes (first AVA_BINS columns; more are ignored).
        file_rows: non-blank lines of the file they come from.

    Returns:
        ava_scores' (mos, std, n_votes, distribution) of the rows.
    """
    votes = np.asfortranarray(counts[:, :AVA_BINS], dtype=np.int64)
    if len(votes) == 1 and file_rows > 1:
        votes = np.asfortranarray(np.concatenate([votes, np.zeros_like(votes)]))
    mos, std, totals, distribution = ava_scores(votes)
    count = len(counts)
    return mos[:count], std[:count], totals[:count], distribution[:count]


def _mask(array: pa.Array | pa.BooleanArray) -> np.ndarray:
    return np.asarray(array.to_numpy(zero_copy_only=False), dtype=bool)


def _drop(
    report: LabelReport, reason: DropReason, ids: pa.Array, keep: np.ndarray, gone: np.ndarray
) -> None:
    """Drop the kept rows where gone is set (in place), counting them with the first ids."""
    dropped = keep & gone
    report.drop_count(
        reason, int(dropped.sum()), ids.take(np.flatnonzero(dropped)[:_EXAMPLES]).to_pylist()
    )
    keep &= ~gone


def _drop_duplicates(rows: AvaRows, keep: np.ndarray, report: LabelReport) -> None:
    """Every row of an id that occurs more than once (counted once per id, as drop_duplicates)."""
    ordered = id_sets.repeated(rows.ids)
    report.drop_count(DropReason.DUPLICATE_ID, len(ordered), ordered[:_EXAMPLES])
    if ordered:
        keep &= ~id_sets.is_in(rows.ids, pa.array(ordered, pa.string()))


def drop_rows(
    rows: AvaRows, lists: SplitLists, manifest: pa.Table | None, report: LabelReport
) -> np.ndarray:
    """Which well-formed rows stay: all drops after the malformed lines, in order.

    Args:
        rows: the file's well-formed rows.
        lists: official split lists (with both, ids in neither are dropped).
        manifest: image_id and width of the images (None = no check).
        report: receives the drops.

    Returns:
        A mask over rows, True for a kept row.
    """
    keep = np.ones(len(rows.ids), dtype=bool)
    _drop_duplicates(rows, keep, report)
    zero: np.ndarray = ~np.any(rows.counts[:, :AVA_BINS], axis=1)
    _drop(report, DropReason.ZERO_VOTES, rows.ids, keep, zero)
    listed = lists.listed
    if listed is not None:
        outside = ~id_sets.is_in(rows.ids, listed)
        _drop(report, DropReason.NOT_IN_SPLIT_LISTS, rows.ids, keep, outside)
    if manifest is not None:
        present = manifest.column("image_id").combine_chunks()
        missing = ~id_sets.is_in(rows.ids, present)
        _drop(report, DropReason.MISSING_IMAGE, rows.ids, keep, missing)
        broken = present.filter(_mask(manifest.column("width").is_null()))
        undecodable = id_sets.is_in(rows.ids, broken)
        _drop(report, DropReason.UNDECODABLE_IMAGE, rows.ids, keep, undecodable)
    return keep


def split_codes(
    ids: pa.Array,
    index: np.ndarray,
    config: SplitConfig,
    test_ids: pa.Array | None,
    chunk: int = BATCH_ROWS,
) -> np.ndarray:
    """Index into SPLIT_NAMES of the split of ids[index], by assign_splits (a chunk at a time).

    Args:
        ids: image ids.
        index: which of them to assign, in the order wanted.
        config: seed and fractions.
        test_ids: the official test list, or None to draw test ids by hash.
        chunk: ids turned into Python strings at a time.

    Returns:
        uint8 codes, one per entry of index.
    """
    codes = np.zeros(len(index), dtype=np.uint8)
    number = {name: code for code, name in enumerate(SPLIT_NAMES)}
    for start in range(0, len(index), chunk):
        part = ids.take(index[start : start + chunk])
        official = None
        if test_ids is not None:
            official = frozenset(part.filter(pc.is_in(part, value_set=test_ids)).to_pylist())
        names = part.to_pylist()
        splits = assign_splits(names, config, official)
        codes[start : start + len(names)] = [number[splits[name]] for name in names]
    return codes


def ava_labels(
    rows: AvaRows,
    lists: SplitLists,
    manifest: pa.Table | None,
    config: SplitConfig,
    version: str,
    report: LabelReport,
) -> AvaLabels:
    """The kept rows in image_id order with their splits.

    Args:
        rows: the file's well-formed rows (malformed lines already counted in report).
        lists: official split lists.
        manifest: image_id and width of the images (None = no check).
        config: seed and fractions of the hash splits.
        version: the label_version.
        report: receives the drops and the kept count.

    Returns:
        The label rows, ready for batches().
    """
    kept = np.flatnonzero(drop_rows(rows, lists, manifest, report))
    order = kept[pc.sort_indices(rows.ids.take(kept)).to_numpy()]
    splits = split_codes(rows.ids, order, config, lists.test)
    report.kept = len(order)
    return AvaLabels(rows, order, splits, version, report)


def split_list_ids(data: bytes, chunk: int = 1 << 16) -> pa.Array:
    """Ids of a .jpgl split file, as parse_split_list reads them, as one arrow array.

    Args:
        data: the file's bytes (UTF-8).
        chunk: characters turned into Python strings at a time (cut after a newline).

    Returns:
        The ids (those repeated across chunks more than once: membership tests don't mind).

    Raises:
        UnicodeDecodeError: the file is not UTF-8 (as parse_split_list's callers decode it).
    """
    text = data.decode("utf-8")
    parts, start = [], 0
    while start < len(text):  # a chunk's Python strings are freed before the next is made
        end = text.find("\n", start + chunk)
        end = len(text) if end < 0 else end + 1
        parts.append(pa.array(list(parse_split_list(text[start:end])), pa.string()))
        start = end
    return pa.concat_arrays(parts) if parts else pa.array([], pa.string())
