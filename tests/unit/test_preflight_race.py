"""Runs that check one new output folder at the same time all pass the check: each check
removes the folders it created, so makedirs can see EEXIST for a folder already gone."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from features import preflight
from schemas.errors import PreflightError


def test_a_folder_removed_between_mkdir_and_the_exists_check_is_created_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exact interleaving: another check creates the folder, our mkdir fails with EEXIST,
    the other check removes it before makedirs looks again."""
    target = tmp_path / "a" / "store"
    real_makedirs = os.makedirs
    calls: list[str] = []

    def racing_makedirs(name: str, mode: int = 0o777, exist_ok: bool = False) -> None:
        calls.append(name)
        if len(calls) == 1:
            real_makedirs(name)
            os.rmdir(name)
            raise FileExistsError(17, "File exists", name)
        real_makedirs(name, mode, exist_ok)

    monkeypatch.setattr(preflight.os, "makedirs", racing_makedirs)  # os is one module: all see it
    preflight.check_writable_folder(str(target), "--store")
    assert calls.count(str(target)) >= 2  # tried again after the EEXIST
    assert not target.exists()  # the check leaves nothing behind


def test_a_file_in_the_way_is_refused_without_retrying(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file created where the folder goes (after the check looked) is no race: one try."""
    target = tmp_path / "store"
    calls: list[str] = []

    def file_appears(name: str, mode: int = 0o777, exist_ok: bool = False) -> None:
        calls.append(name)
        Path(name).write_text("a file")
        raise FileExistsError(17, "File exists", name)

    monkeypatch.setattr(preflight.os, "makedirs", file_appears)
    with pytest.raises(PreflightError, match=r"^--store .*store: cannot create the folder \(File"):
        preflight.check_writable_folder(str(target), "--store")
    assert calls == [str(target)]
    with pytest.raises(PreflightError, match=r"store is a file, not a folder$"):
        preflight.check_writable_folder(str(target / "inner"), "--store")


def test_threads_checking_one_new_folder_together_all_pass(tmp_path: Path) -> None:
    failures: list[BaseException] = []
    for round_number in range(30):
        target = tmp_path / f"round-{round_number}" / "store"
        barrier = threading.Barrier(4)

        def check(folder: Path = target, start: threading.Barrier = barrier) -> None:
            start.wait()
            try:
                preflight.check_writable_folder(str(folder), "--store")
            except BaseException as error:  # collected: a thread's raise would be lost
                failures.append(error)

        threads = [threading.Thread(target=check) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []
