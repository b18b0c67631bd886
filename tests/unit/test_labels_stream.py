"""AVA labels read in blocks: the streamed table against numpy on the votes, block cutting, the
batch-by-batch Parquet write, and the manifest read column by column."""

from __future__ import annotations

import io
import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dask
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features import files
from features.download.manifest import read_manifest
from features.labels.ava_blocks import decode, line_count, read_blocks
from features.labels.ava_text import TAG_COLUMNS
from features.labels.builders import build_ava, read_ava_labels
from features.labels.engines import EngineOptions
from features.labels.manifest_columns import read_manifest_columns
from features.labels.parsing import LabelReport, SplitConfig, ava_frame
from features.parquet_writes import atomic_write_parquet_batches
from schemas.errors import ManifestError
from schemas.labels import LABELS_SCHEMA
from schemas.tables import MANIFEST_SCHEMA

ROOTS = itertools.count()
GRADES = np.arange(1, 11, dtype=np.float64)


@pytest.fixture(autouse=True)
def _sync_scheduler() -> Iterator[None]:
    with dask.config.set(scheduler="sync"):
        yield


@dataclass(frozen=True)
class Release:
    """What _release wrote: ids and votes of its 300 good lines (line n + 1 holds row n)."""

    ids: list[str]
    votes: np.ndarray
    tags: np.ndarray


def _release(raw: Path, rng: np.random.Generator) -> Release:
    """AVA.txt of ids 1000..1299 (every 17th without votes) and split lists (without 1299).

    Id 1004 comes back on line 250 (a duplicate many blocks later); lines 1, 150 and 302 are
    malformed (the first, one in the middle, the last: at block edges for some block sizes).
    """
    ids = [str(1000 + i) for i in range(300)]
    votes = rng.integers(0, 30, size=(300, 10))
    votes[::17] = 0
    tags = rng.integers(0, 66, size=(300, 3))
    lines = [
        " ".join([str(n + 1), i, *map(str, v), *map(str, t)])
        for n, (i, v, t) in enumerate(zip(ids, votes, tags, strict=True))
    ]
    lines.insert(249, f"250 1004 {' '.join(['1'] * 13)}")
    lines[0] = "1 1000 1 2 3"
    lines[149] = "150 1149 1 1 1 1 1 1 1 1 1 -1 0 0 5"
    lines.append("302 1300 1 1 1 1 1 1 1 1 1 1 1 1 z")
    (raw / "AVA.txt").write_text("\n".join(lines) + "\n")
    (raw / "generic_test.jpgl").write_text("\n".join(ids[:40]) + "\n")
    (raw / "generic_ls_train.jpgl").write_text("\n".join(ids[40:299]) + "\n")
    return Release(ids, votes, tags)


def _check_against_numpy(table: pa.Table, release: Release) -> None:
    """The table against one computed here: kept ids sorted, MOS and std from the votes."""
    ids, votes = release.ids, release.votes
    dropped = {"1000", "1149", "1004", "1299", "1200", "1201"}  # 1200 missing, 1201 no width
    keep = sorted(
        (n for n, i in enumerate(ids) if i not in dropped and votes[n].sum()), key=lambda n: ids[n]
    )
    kept = votes[keep].astype(np.float64)
    totals = kept.sum(axis=1)
    mos = kept @ GRADES / totals
    assert table.column("image_id").to_pylist() == [ids[n] for n in keep]
    np.testing.assert_allclose(table.column("mos").to_numpy(), mos, rtol=1e-12)
    np.testing.assert_allclose(
        table.column("std").to_numpy(),
        np.sqrt(kept @ GRADES**2 / totals - mos**2),
        rtol=1e-9,
        atol=1e-6,
    )
    np.testing.assert_array_equal(table.column("n_votes").to_numpy(), totals.astype(np.int64))
    distribution = np.stack(table.column("distribution").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(distribution, kept / totals[:, None], rtol=1e-6)
    tags = np.stack([table.column(name).to_numpy() for name in TAG_COLUMNS], axis=1)
    np.testing.assert_array_equal(tags, release.tags[keep])
    assert table.column("split").to_pylist() == ["test" if n < 40 else "train" for n in keep]


@pytest.mark.parametrize(
    ("engine", "blocksize"), [("pandas", 1), ("pandas", 97), ("dask", 150), ("pandas", 1 << 20)]
)
def test_streamed_table_matches_numpy_on_the_votes(
    engine: str, blocksize: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    release = _release(tmp_path, np.random.default_rng(3))
    present = [i for i in release.ids if i != "1200"]
    widths = pa.array([None if i == "1201" else 64 for i in present], pa.int32())
    manifest = pa.table({"image_id": present, "width": widths})
    config = SplitConfig(seed=1, val_fraction=0.0)
    options = EngineOptions(engine, blocksize=blocksize)
    with caplog.at_level(logging.WARNING):
        labels = read_ava_labels(tmp_path, manifest, config, options, max_malformed_share=0.02)
    warned = [
        r.getMessage().split("AVA.txt:")[1].split(":")[0]
        for r in caplog.records
        if r.levelname == "WARNING"
    ]
    assert warned == ["1", "150", "302"]
    out = str(tmp_path / "labels.parquet")
    atomic_write_parquet_batches(out, LABELS_SCHEMA, labels.batches(size=7))
    table = pq.read_table(out)
    assert table.equals(labels.table()) and table.schema == LABELS_SCHEMA
    assert table.equals(build_ava(tmp_path, manifest, config).table)
    _check_against_numpy(table, release)
    tests = table.column("split").to_pylist().count("test")
    assert labels.split_counts() == {"test": tests, "train": table.num_rows - tests}
    zero = int((release.votes[1:].sum(axis=1) == 0).sum())  # line 1 is malformed
    assert dict(labels.report.dropped) == {
        "malformed_line": 3,
        "duplicate_id": 1,
        "zero_votes": zero,
        "not_in_split_lists": 1,
        "missing_image": 1,
        "undecodable_image": 1,
    }
    assert labels.report.examples["duplicate_id"] == ["1004"]
    assert labels.report.kept == table.num_rows


BIG = "116 40 12880599417 35 100000000000000000 17 0 0 0 0"  # votes whose float sum is inexact


@pytest.mark.parametrize(
    "lines",
    [
        [f"1 502 {BIG} 0 0 0"],  # a one-line file: numpy summed its one row pairwise
        [f"1 502 {BIG} 0 0 0", "2 7 1 1", f"3 503 {BIG} 1 2 3"],  # one row kept, several lines
        [f"1 502 {BIG} 0 0 0", *[f"{n} 7 {' '.join(['0'] * 13)}" for n in range(2, 9)]],
    ],
)
@pytest.mark.parametrize("engine", ["pandas", "dask"])
def test_a_lone_row_scores_bit_for_bit_as_in_the_whole_file(
    lines: list[str], engine: str, tmp_path: Path
) -> None:
    text = "\n".join(lines) + "\n"
    (tmp_path / "AVA.txt").write_text(text)
    whole = ava_frame(text, str(tmp_path / "AVA.txt"), LabelReport(), max_malformed_share=0.5)
    options = EngineOptions(engine, blocksize=16)
    labels = read_ava_labels(tmp_path, None, SplitConfig(), options, max_malformed_share=0.5)
    table = labels.table()
    assert table.column("image_id").to_pylist() == whole["image_id"].tolist()
    assert table.column("mos").to_pylist() == whole["mos"].tolist()
    assert table.column("std").to_pylist() == whole["std"].tolist()
    assert table.column("n_votes").to_pylist() == whole["n_votes"].tolist()


@settings(max_examples=60, deadline=None)
@given(
    st.text(st.sampled_from("ab 1\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\u2028é"), max_size=60).map(
        str.encode
    )
    | st.binary(max_size=60)
)
def test_line_count_is_splitlines(block: bytes) -> None:
    assert line_count(block) == len(decode(block).splitlines())


@settings(max_examples=60, deadline=None)
@given(st.text(st.sampled_from("ab 1\n\r\x0b\x85é"), max_size=80), st.integers(1, 12))
def test_blocks_cut_after_a_newline_and_know_their_first_line(text: str, size: int) -> None:
    data = text.encode()
    url = f"memory:///blocks-{next(ROOTS)}.txt"
    with fsspec.open(url, "wb") as handle:
        handle.write(data)
    blocks = list(read_blocks(url, size))
    assert b"".join(block for block, _ in blocks) == data
    offset = 0
    assert all(block.endswith(b"\n") for block, _ in blocks[:-1])
    for block, first_line in blocks:
        assert first_line == 1 + len(decode(data[:offset]).splitlines())
        offset += len(block)


def _batches(fail: bool) -> Iterator[pa.RecordBatch]:
    yield pa.record_batch({"a": [1, 2]})
    if fail:
        raise RuntimeError("stopped mid-table")
    yield pa.record_batch({"a": [3]})


@pytest.mark.parametrize("remote", [False, True])
def test_batches_are_published_whole_or_not_at_all(remote: bool, tmp_path: Path) -> None:
    folder = f"memory:///write-{next(ROOTS)}" if remote else str(tmp_path)
    target = files.join(folder, "t.parquet")
    schema = pa.schema([pa.field("a", pa.int64())])
    files.atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError, match="mid-table"):
        atomic_write_parquet_batches(target, schema, _batches(fail=True))
    assert files.read_bytes(target) == b"old"
    assert files.list_names(folder) == ["t.parquet"]  # no temp file left behind
    atomic_write_parquet_batches(target, schema, _batches(fail=False))
    assert pq.read_table(io.BytesIO(files.read_bytes(target))).column("a").to_pylist() == [1, 2, 3]


def _manifest_table(**changes: pa.Array) -> pa.Table:
    columns = {
        "dataset": pa.array(["ava"] * 3),
        "image_id": pa.array(["1", "2", "3"]),
        "uri": pa.array(["a", "b", "c"]),
        "bytes": pa.array([1, 2, 3], pa.int64()),
        "width": pa.array([4, None, 6], pa.int32()),
        "height": pa.array([4, None, 6], pa.int32()),
        "sha256": pa.array(["x", "y", "z"]),
        "split": pa.array([None, None, None], pa.string()),
    }
    columns.update(changes)
    return pa.table({name: array for name, array in columns.items() if array is not None})


@pytest.mark.parametrize(
    "table",
    [
        _manifest_table(),
        _manifest_table(sha256=None, uri=None),  # type: ignore[arg-type]
        _manifest_table(uri=pa.array(["a", None, "c"])),
        _manifest_table(image_id=pa.array(["1", "2", "1"])),
        _manifest_table(width=pa.array([4, 1 << 40, 6], pa.int64())),
        _manifest_table(bytes=pa.array(["1", "x", "3"])),
        _manifest_table(width=pa.array([4, 5, 6], pa.int64()), split=pa.array([1, 2, 3])),
    ],
    ids=["valid", "missing", "nulls", "duplicates", "overflow", "not-a-number", "castable"],
)
def test_manifest_columns_are_checked_as_read_manifest_checks_the_table(
    table: pa.Table, tmp_path: Path
) -> None:
    path = str(tmp_path / "manifest.parquet")
    files.atomic_write_parquet(path, table)
    try:
        whole = read_manifest(path)
    except ManifestError as error:
        with pytest.raises(ManifestError) as raised:
            read_manifest_columns(path, ["image_id", "width"])
        assert str(raised.value) == str(error)
        return
    columns = read_manifest_columns(path, ["image_id", "width"])
    assert columns.equals(whole.select(["image_id", "width"]))
    assert columns.schema == pa.schema(
        [MANIFEST_SCHEMA.field("image_id"), MANIFEST_SCHEMA.field("width")]
    )


@pytest.mark.parametrize("content", [None, b"not a parquet file"])
def test_manifest_that_is_not_one_fails_as_read_manifest(
    content: bytes | None, tmp_path: Path
) -> None:
    path = str(tmp_path / "manifest.parquet")
    if content is not None:
        (tmp_path / "manifest.parquet").write_bytes(content)
    with pytest.raises(ManifestError) as expected:
        read_manifest(path)
    with pytest.raises(ManifestError) as raised:
        read_manifest_columns(path, ["image_id"])
    assert str(raised.value) == str(expected.value)
