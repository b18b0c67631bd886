"""AVA from its official form, a split 7z (AVA.7z.001 ...): extracted once, or refused up front."""

from __future__ import annotations

from pathlib import Path

import py7zr
import pyarrow.parquet as pq
import pytest

from pipelines import download
from pipelines.sample import write_sample


def _split_seven_zip(images: Path, out: Path, parts: int) -> list[Path]:
    archive = out / "AVA.7z"
    with py7zr.SevenZipFile(archive, "w") as handle:
        handle.writeall(images, "images")
    data = archive.read_bytes()
    archive.unlink()
    size = -(-len(data) // parts)
    paths = [out / f"AVA.7z.{n + 1:03d}" for n in range(parts)]
    for number, path in enumerate(paths):
        path.write_bytes(data[number * size : (number + 1) * size])
    return paths


def _argv(sample: Path, dest: Path, source: str) -> list[str]:
    return [
        "--dataset",
        "ava",
        "--dest",
        str(dest),
        "--source",
        source,
        "--list",
        str(sample / "AVA.txt"),
    ]


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    out = tmp_path / "sample"
    write_sample(out, n=5, seed=4, broken=False, min_side=40, max_side=60)
    return out


def test_ava_from_split_seven_zip(sample: Path, tmp_path: Path) -> None:
    parts = _split_seven_zip(sample / "images", tmp_path, 3)
    dest = tmp_path / "ava"
    source = ",".join(str(part) for part in parts)  # every part listed: still extracted once
    assert download.run(_argv(sample, dest, source)) == 0
    ids = {line.split()[1] for line in (sample / "AVA.txt").read_text().splitlines()}
    rows = pq.read_table(dest / "manifest.parquet").to_pylist()
    assert {row["image_id"] for row in rows} == ids
    for row in rows:
        original = sample / "images" / Path(row["uri"]).name
        assert Path(row["uri"]).read_bytes() == original.read_bytes()


@pytest.mark.parametrize("damage", ["missing_part", "corrupt"])
def test_broken_split_archive_fails_before_any_work(
    sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    parts = _split_seven_zip(sample / "images", tmp_path, 3)
    if damage == "missing_part":
        parts[1].unlink()
    else:
        parts[2].write_bytes(bytes(parts[2].stat().st_size))
    dest = tmp_path / "ava"
    assert download.run(_argv(sample, dest, str(parts[0]))) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "AVA.7z.00" in error
    assert (
        "missing part(s) AVA.7z.002" in error if damage == "missing_part" else "unreadable" in error
    )
    assert not (dest / "downloads.parquet").exists() and not (dest / "manifest.parquet").exists()
    assert not (dest / "images").exists()
