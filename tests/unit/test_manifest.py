"""Manifest building: stable ids, digests and sizes, duplicate ids named."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from features import files
from features.download import manifest
from features.download.manifest import (
    build_manifest,
    entries_from_csv,
    entries_from_folder,
    read_manifest,
    scan_images,
    write_manifest,
)
from features.download.manifest_entries import IMAGE_SUFFIXES, csv_entries, folder_entries
from schemas.errors import ManifestError
from schemas.tables import MANIFEST_SCHEMA


def _write(path, size=(90, 80)) -> None:
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(path)


def test_folder_manifest_has_true_sizes_and_digests(tmp_path) -> None:
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "b.jpg", (120, 90))
    _write(tmp_path / "sub" / "a.png", (80, 100))
    (tmp_path / "notes.txt").write_text("ignored")
    table = build_manifest(entries_from_folder(tmp_path), "demo")
    rows = table.to_pylist()
    assert [r["image_id"] for r in rows] == ["a", "b"]
    assert (rows[0]["width"], rows[0]["height"]) == (80, 100)
    data = (tmp_path / "b.jpg").read_bytes()
    assert rows[1]["sha256"] == hashlib.sha256(data).hexdigest() and rows[1]["bytes"] == len(data)
    out = str(tmp_path / "m.parquet")
    files.atomic_write_parquet(out, table)
    assert read_manifest(out).equals(table)


def test_duplicate_ids_are_named(tmp_path) -> None:
    _write(tmp_path / "x.jpg")
    _write(tmp_path / "x.png")
    with pytest.raises(
        ManifestError, match=r"duplicate image id\(s\) \['x'\].*x\.jpg.*x\.png|x\.png.*x\.jpg"
    ):
        build_manifest(entries_from_folder(tmp_path), "d")


def test_csv_gives_ids_and_splits(tmp_path) -> None:
    _write(tmp_path / "one.jpg")
    _write(tmp_path / "two.jpg")
    labels = tmp_path / "labels.csv"
    labels.write_text("filename,image_id,split\none.jpg,id-1,train\ntwo.jpg,,test\n")
    table = build_manifest(entries_from_csv(tmp_path, labels), "d")
    assert table.column("image_id").to_pylist() == ["id-1", "two"]
    assert table.column("split").to_pylist() == ["train", "test"]
    labels.write_text("filename\none.jpg\n\n,\n")
    with pytest.raises(ManifestError, match=r"labels.csv:4: empty filename"):
        entries_from_csv(tmp_path, labels)


def test_read_manifest_names_bad_input(tmp_path) -> None:
    with pytest.raises(ManifestError, match="no such file"):
        read_manifest(str(tmp_path / "none.parquet"))
    (tmp_path / "bad.parquet").write_text("nope")
    with pytest.raises(ManifestError, match="not a Parquet file"):
        read_manifest(str(tmp_path / "bad.parquet"))


def _expected_manifest(paths: list[Path], dataset: str, splits: dict[str, str | None]) -> pa.Table:
    """The manifest computed file by file with hashlib and PIL, independently of the module."""
    rows = []
    for path in sorted(paths, key=lambda path: path.stem):
        data = path.read_bytes()
        try:
            with Image.open(path) as image:
                width, height = image.size
        except Exception:
            width = height = None
        rows.append(
            {
                "dataset": dataset,
                "image_id": path.stem,
                "uri": str(path.resolve()),
                "bytes": len(data),
                "width": width,
                "height": height,
                "sha256": hashlib.sha256(data).hexdigest(),
                "split": splits.get(path.stem),
            }
        )
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


def _images(folder: Path, count: int) -> list[Path]:
    """count (at most 11) images of distinct sizes (some in a subfolder, one with a broken header)."""
    (folder / "sub").mkdir(parents=True)
    paths = []
    for index in range(count):
        path = folder / ("sub" if index % 3 else ".") / f"img-{(index * 7) % 11:02d}.png"
        _write(path, (20 + index, 30 + 2 * index))
        paths.append(path.resolve())
    broken = folder / "sub" / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    return [*paths, broken.resolve()]


def test_streamed_manifest_equals_independent_computation(tmp_path) -> None:
    paths = _images(tmp_path / "images", 10)
    (tmp_path / "images" / "notes.txt").write_text("ignored")
    expected = _expected_manifest(paths, "demo", {})
    out = tmp_path / "out" / "m.parquet"
    entries = folder_entries(tmp_path / "images")
    summary = write_manifest(entries, "demo", str(out), threads=2, chunk_rows=3)
    written = read_manifest(str(out))
    assert written.equals(expected)
    assert pq.ParquetFile(out).metadata.num_row_groups == 4  # 11 rows, 3 a chunk
    assert (summary.rows, summary.unreadable) == (11, 1)
    assert summary.total_bytes == sum(path.stat().st_size for path in paths)
    assert summary.splits == Counter({None: 11})
    # The in-memory path (other callers) gives the same table.
    assert build_manifest(entries_from_folder(tmp_path / "images"), "demo").equals(expected)
    assert sorted(os.listdir(out.parent)) == ["m.parquet"]  # no temp file left


def test_streamed_csv_manifest_keeps_splits_in_id_order(tmp_path) -> None:
    paths = _images(tmp_path, 7)
    splits = {path.stem: ("train" if index % 2 else None) for index, path in enumerate(paths)}
    labels = tmp_path / "labels.csv"
    lines = [f"{path.relative_to(tmp_path)},,{splits[path.stem] or ''}" for path in paths]
    labels.write_text("\n".join(["filename,image_id,split", *lines]) + "\n")
    out = str(tmp_path / "m.parquet")
    summary = write_manifest(csv_entries(tmp_path, labels), "d", out, threads=3, chunk_rows=2)
    expected = _expected_manifest(paths, "d", splits)
    assert read_manifest(out).equals(expected)
    assert list(summary.splits.items()) == list(
        Counter(expected.column("split").to_pylist()).items()
    )


def test_streamed_manifest_to_a_url(tmp_path) -> None:
    paths = _images(tmp_path / "images", 5)
    out = f"memory://manifests/{tmp_path.name}/m.parquet"
    write_manifest(folder_entries(tmp_path / "images"), "u", out, chunk_rows=2)
    assert read_manifest(out).equals(_expected_manifest(paths, "u", {}))


def _fail_on_third_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    write_batch = pq.ParquetWriter.write_batch

    def failing(self: pq.ParquetWriter, batch: pa.RecordBatch, *args: object) -> None:
        calls.append(batch.num_rows)
        if len(calls) == 3:
            raise OSError("disk full")
        write_batch(self, batch, *args)

    monkeypatch.setattr(pq.ParquetWriter, "write_batch", failing)


def _vanish_on_fifth_file(monkeypatch: pytest.MonkeyPatch) -> None:
    described = []
    describe = manifest.describe_file

    def vanishing(path: Path | str) -> tuple[int, str, int | None, int | None]:
        described.append(path)
        if len(described) == 5:
            os.unlink(path)
        return describe(path)

    monkeypatch.setattr(manifest, "describe_file", vanishing)


@pytest.mark.parametrize("fault", [_fail_on_third_batch, _vanish_on_fifth_file])
@pytest.mark.parametrize("url", [False, True])
@pytest.mark.parametrize("old", [None, "old"])
def test_failure_mid_write_leaves_out_as_it_was(tmp_path, monkeypatch, fault, url, old) -> None:
    _images(tmp_path / "images", 10)
    folder = f"memory://manifests/{tmp_path.name}" if url else str(tmp_path / "o")
    out = f"{folder}/m.parquet"
    if old is not None:
        files.atomic_write_text(out, old)
    fault(monkeypatch)
    with pytest.raises(OSError):
        write_manifest(folder_entries(tmp_path / "images"), "d", out, threads=1, chunk_rows=2)
    if old is None:
        assert not files.exists(out)
    else:
        assert files.read_bytes(out) == old.encode()
    if not url:  # the temp file is gone too
        assert os.listdir(folder) == ([] if old is None else ["m.parquet"])


def test_missing_and_duplicate_files_write_nothing(tmp_path) -> None:
    _write(tmp_path / "one.jpg")
    labels = tmp_path / "labels.csv"
    labels.write_text("filename,image_id\nnope.jpg,a\none.jpg,b\ngone.jpg,c\n")
    out = tmp_path / "m.parquet"
    with pytest.raises(ManifestError, match=r"2 listed file\(s\) do not exist, e.g. \[.*nope.jpg"):
        write_manifest(csv_entries(tmp_path, labels), "d", str(out))
    labels.write_text("filename,image_id\none.jpg,a\none.jpg,a\n")
    with pytest.raises(ManifestError, match=r"duplicate image id\(s\) \['a'\]"):
        write_manifest(csv_entries(tmp_path, labels), "d", str(out))
    assert not out.exists()


def test_folder_walk_is_in_path_order(tmp_path) -> None:
    # "a-b" sorts before "a/..." as a string but after it as a Path: scan_images keeps Path order.
    for name in ("a/z.jpg", "a-b.jpg", "a b/c.png", "a/b/y.JPG", "a.jpg/x.jpg", ".hidden.gif"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        _write(tmp_path / name)
    expected = sorted(
        Path(root) / name
        for root, _, names in os.walk(tmp_path)
        for name in names
        if Path(name).suffix.lower() in IMAGE_SUFFIXES
    )
    assert scan_images(tmp_path) == expected
    entries = folder_entries(tmp_path)
    assert sorted(entries.full_paths(entries.path)) == sorted(map(str, expected))
    assert sorted(entries.image_id.to_pylist()) == sorted(path.stem for path in expected)
