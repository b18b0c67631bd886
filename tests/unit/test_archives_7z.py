"""7z and split 7z (AVA's AVA.7z.001 ...) extraction under the same safety rules as zip/tar."""

from __future__ import annotations

import os
from pathlib import Path

import py7zr
import pytest

from features.download import archives
from features.download.archives import ArchiveLimits, safe_extract, volume_parts
from schemas.errors import ArchiveError

MEMBERS = {"images/1.jpg": os.urandom(3000), "images/sub/2.jpg": b"two" * 500, "readme.txt": b"hi"}


def _seven_zip(path: Path, members: dict[str, bytes]) -> Path:
    with py7zr.SevenZipFile(path, "w") as archive:
        for name, data in members.items():
            archive._writestr(data, name)  # no name check: the tests write hostile names too
    return path


def _split(archive: Path, parts: int) -> list[Path]:
    """What 7-Zip's -v switch does: the archive bytes cut into X.7z.001, X.7z.002, ..."""
    data = archive.read_bytes()
    size = -(-len(data) // parts)
    paths = []
    for number in range(parts):
        path = archive.parent / f"{archive.name}.{number + 1:03d}"
        path.write_bytes(data[number * size : (number + 1) * size])
        paths.append(path)
    archive.unlink()
    return paths


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_seven_zip_extracts_exactly(tmp_path: Path) -> None:
    archive = _seven_zip(tmp_path / "a.7z", MEMBERS)
    written = safe_extract(archive, tmp_path / "out")
    assert _tree(tmp_path / "out") == MEMBERS
    assert written == sum(map(len, MEMBERS.values()))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # staging gone


@pytest.mark.parametrize("given", [0, 1, 2])
def test_split_archive_extracts_from_any_part(tmp_path: Path, given: int) -> None:
    parts = _split(_seven_zip(tmp_path / "AVA.7z", MEMBERS), 3)
    assert volume_parts(parts[given]) == parts
    safe_extract(parts[given], tmp_path / "out")
    assert _tree(tmp_path / "out") == MEMBERS


def test_missing_part_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    parts = _split(_seven_zip(tmp_path / "AVA.7z", MEMBERS), 3)
    parts[1].unlink()
    with pytest.raises(ArchiveError, match=r"missing part\(s\) AVA\.7z\.002"):
        safe_extract(parts[0], tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["AVA.7z.001", "AVA.7z.003"]


def test_missing_last_part_and_corrupt_archive_are_unreadable(tmp_path: Path) -> None:
    parts = _split(_seven_zip(tmp_path / "AVA.7z", MEMBERS), 3)
    parts[2].unlink()  # the header lives at the end: without the last part there is no listing
    with pytest.raises(ArchiveError, match="unreadable archive"):
        safe_extract(parts[0], tmp_path / "out")
    corrupt = tmp_path / "corrupt.7z"
    data = bytearray(_seven_zip(tmp_path / "c.7z", MEMBERS).read_bytes())
    data[40:60] = bytes(20)
    corrupt.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match=r"corrupt\.7z: unreadable archive"):
        safe_extract(corrupt, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("name", "message"),
    [("../evil.txt", "escapes the destination"), ("/abs/evil.txt", "absolute path")],
)
def test_path_traversal_member_is_refused(tmp_path: Path, name: str, message: str) -> None:
    archive = _seven_zip(tmp_path / "t.7z", {"ok.txt": b"ok", name: b"evil"})
    with pytest.raises(ArchiveError, match=message):
        safe_extract(archive, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.7z"]


def test_symlink_member_is_refused(tmp_path: Path) -> None:
    (tmp_path / "target.txt").write_bytes(b"secret")
    (tmp_path / "link").symlink_to(tmp_path / "target.txt")
    with py7zr.SevenZipFile(tmp_path / "l.7z", "w") as archive:
        archive.write(tmp_path / "link", "link")
    with pytest.raises(ArchiveError, match="is a link"):
        safe_extract(tmp_path / "l.7z", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_oversize_member_and_ratio_are_refused(tmp_path: Path) -> None:
    archive = _seven_zip(tmp_path / "big.7z", {"big.bin": bytes(200_000)})
    with pytest.raises(ArchiveError, match="exceed the cap 100000"):
        safe_extract(archive, tmp_path / "out", ArchiveLimits(max_total_bytes=100_000))
    with pytest.raises(ArchiveError, match="compression ratio"):
        safe_extract(archive, tmp_path / "out", ArchiveLimits(max_ratio=20))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.7z"]


def test_lying_header_is_stopped_by_counting_written_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _seven_zip(tmp_path / "big.7z", {"big.bin": bytes(200_000)})
    monkeypatch.setattr(archives, "_check", lambda *args, **kwargs: None)  # header "says" small
    with pytest.raises(ArchiveError, match="extracted bytes exceed the cap 100000"):
        safe_extract(archive, tmp_path / "out", ArchiveLimits(max_total_bytes=100_000))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.7z"]
