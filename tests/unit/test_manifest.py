"""Manifest building: stable ids, digests and sizes, duplicate ids named."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from features import files
from features.download.manifest import (
    build_manifest,
    entries_from_csv,
    entries_from_folder,
    read_manifest,
)
from schemas.errors import ManifestError


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
