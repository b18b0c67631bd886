"""The manifest's path resolution, one folder at a time, equals Path.resolve() on every path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from features.download.manifest import resolved_path


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Real folders, a link to a folder, a link to a file, a dangling link, a link loop."""
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "real" / "a.jpg").write_bytes(b"a")
    (tmp_path / "real" / "sub" / "b.jpg").write_bytes(b"b")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "target.jpg").write_bytes(b"t")
    (tmp_path / "linked").symlink_to(tmp_path / "real")
    (tmp_path / "real" / "file-link.jpg").symlink_to(tmp_path / "elsewhere" / "target.jpg")
    (tmp_path / "real" / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "real" / "sub" / "up").symlink_to("..")
    monkeypatch.chdir(tmp_path)
    return tmp_path


SPELLINGS = [
    "real/a.jpg",
    "./real/a.jpg",
    "real/sub/../a.jpg",
    "linked/a.jpg",
    "linked/sub/b.jpg",
    "linked/sub/up/a.jpg",
    "real/file-link.jpg",
    "linked/file-link.jpg",
    "real/dangling.jpg",
    "real/missing.jpg",
    "a-file-here.jpg",
    "real/sub/up/sub/../sub/b.jpg",
]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_equals_path_resolve(tree: Path, spelling: str) -> None:
    folders: dict[str, str] = {}
    for path in (spelling, str(tree / spelling)):
        assert resolved_path(path, folders) == str(Path(path).resolve()), path
        assert resolved_path(path, folders) == str(Path(path).resolve()), "cached folder"


def test_one_cache_across_many_spellings(tree: Path) -> None:
    folders: dict[str, str] = {}
    expected = [str(Path(spelling).resolve()) for spelling in SPELLINGS * 3]
    assert [resolved_path(spelling, folders) for spelling in SPELLINGS * 3] == expected
    assert len(folders) <= len({os.path.dirname(spelling) for spelling in SPELLINGS})
