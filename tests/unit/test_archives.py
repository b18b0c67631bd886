"""Safe extraction refuses zip slip, absolute paths, links, devices and bombs, writing nothing."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from features.download.archives import ArchiveLimits, safe_extract
from schemas.errors import ArchiveError


def _zip(path: Path, members: dict[str, bytes], link: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        if link is not None:
            info = zipfile.ZipInfo(link)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return path


def _tar(path: Path, build: str) -> Path:
    with tarfile.open(path, "w") as archive:
        ok = tarfile.TarInfo("ok.txt")
        ok.size = 2
        archive.addfile(ok, io.BytesIO(b"hi"))
        special = tarfile.TarInfo("evil")
        if build == "symlink":
            special.type, special.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif build == "hardlink":
            special.type, special.linkname = tarfile.LNKTYPE, "ok.txt"
        elif build == "device":
            special.type = tarfile.CHRTYPE
        elif build == "dotdot":
            special.name, special.size = "../evil", 1
        archive.addfile(special, io.BytesIO(b"x") if build == "dotdot" else None)
    return path


def _nothing_written(root: Path, archive: Path) -> None:
    assert sorted(p.name for p in root.iterdir()) == [archive.name]


@pytest.mark.parametrize(("name", "message"), [
    ("../evil.txt", r"escapes the destination"),
    ("a/../../evil.txt", r"escapes the destination"),
    ("/abs/evil.txt", r"absolute path"),
    ("C:/evil.txt", r"absolute path"),
])
def test_zip_slip_is_refused(tmp_path: Path, name: str, message: str) -> None:
    archive = _zip(tmp_path / "a.zip", {"fine.txt": b"ok", name: b"evil"})
    with pytest.raises(ArchiveError, match=message):
        safe_extract(archive, tmp_path / "out")
    _nothing_written(tmp_path, archive)


def test_zip_symlink_is_refused(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "a.zip", {"fine.txt": b"ok"}, link="link")
    with pytest.raises(ArchiveError, match="symbolic link"):
        safe_extract(archive, tmp_path / "out")
    _nothing_written(tmp_path, archive)


@pytest.mark.parametrize(("build", "message"), [("symlink", "is a link"), ("hardlink", "is a link"),
                                                 ("device", "device"), ("dotdot", "escapes")])
def test_tar_unsafe_members_are_refused(tmp_path: Path, build: str, message: str) -> None:
    archive = _tar(tmp_path / "a.tar", build)
    with pytest.raises(ArchiveError, match=message):
        safe_extract(archive, tmp_path / "out")
    _nothing_written(tmp_path, archive)


def test_bombs_are_refused(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "a.zip", {"zeros.bin": b"\0" * 2_000_000})
    with pytest.raises(ArchiveError, match="compression ratio"):
        safe_extract(archive, tmp_path / "out", ArchiveLimits(max_ratio=100))
    with pytest.raises(ArchiveError, match="exceed the cap"):
        safe_extract(archive, tmp_path / "out", ArchiveLimits(max_total_bytes=1000, max_ratio=1e9))
    _nothing_written(tmp_path, archive)


def test_good_archive_extracts_exactly_and_replaces(tmp_path: Path) -> None:
    members = {"Images/AF1.jpg": b"one", "train_test_files/All_labels.txt": b"AF1.jpg 3.0\n"}
    archive = _zip(tmp_path / "a.zip", members)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stale.txt").write_text("old")
    assert safe_extract(archive, tmp_path / "out") == sum(len(v) for v in members.values())
    found = {str(p.relative_to(tmp_path / "out")): p.read_bytes()
             for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert found == members
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip", "out"]  # no staging left
