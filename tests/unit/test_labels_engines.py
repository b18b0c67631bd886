"""AVA label engines: pandas and dask give identical tables, drops and line-numbered problems."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.labels.builders import build_ava, read_ava_labels
from features.labels.engines import LABEL_ENGINES, EngineOptions, choose_engine
from features.labels.parsing import (
    LabelReport,
    SplitConfig,
    assign_splits,
    ava_frame,
    finalize_labels,
    sha256_bytes,
)
from pipelines.labels import run
from schemas.errors import ConfigError, LabelError
from schemas.labels import label_version

MEMORY = fsspec.filesystem("memory")
ROOTS = itertools.count()
BAD_FIELDS = ("x", "-3", "")  # non-numeric, negative, and a missing field


@pytest.fixture(autouse=True)
def _sync_scheduler() -> Iterator[None]:
    with dask.config.set(scheduler="sync"):
        yield


@pytest.fixture
def memory_root() -> Iterator[str]:
    root = f"/labels-test-{next(ROOTS)}"
    yield f"memory://{root}"
    if MEMORY.exists(root):
        MEMORY.rm(root, recursive=True)


def _line(index: int, image_id: str, votes: list[int], tags: list[int], sep: str) -> str:
    return sep.join(str(value) for value in [index, image_id, *votes, *tags])


@st.composite
def ava_texts(draw: st.DrawFn) -> str:
    """AVA.txt contents: repeated ids, zero-vote rows, blank lines, CRLF, maybe one bad field."""
    count = draw(st.integers(0, 25))
    sep = draw(st.sampled_from([" ", "\t", "  "]))
    end = draw(st.sampled_from(["\n", "\r\n"]))
    lines = []
    for index in range(count):
        image_id = draw(
            st.sampled_from(["7", "42", "1000"]) | st.text("0123456789", min_size=3, max_size=6)
        )
        counts = st.integers(0, 40) | st.integers(0, 10**17)  # large: inexact float sums
        votes = draw(st.just([0] * 10) | st.lists(counts, min_size=10, max_size=10))
        tags = draw(st.lists(st.integers(0, 66), min_size=3, max_size=3))
        lines.append(_line(index + 1, image_id, votes, tags, sep))
        if draw(st.integers(0, 9)) == 0:
            lines.append("")
    if lines and draw(st.booleans()):
        where = draw(st.integers(0, len(lines) - 1))
        fields = lines[where].split(sep) or ["1"]
        fields[-1] = draw(st.sampled_from(BAD_FIELDS))
        lines[where] = sep.join(field for field in fields if field)
    return end.join(lines) + (end if draw(st.booleans()) else "")


def _outcome(engine: str, root: str, blocksize: int, share: float) -> tuple[Any, ...]:
    options = EngineOptions(engine, blocksize=blocksize)
    try:
        labels = read_ava_labels(root, None, SplitConfig(), options, share)
    except LabelError as error:
        return ("error", str(error))
    return ("ok", labels.table().to_pydict(), labels.report)


def _reference(text: str, source: str, share: float) -> tuple[Any, ...]:
    """The whole file parsed, scored and cleaned at once (ava_frame), as before streaming."""
    report = LabelReport()
    try:
        frame = ava_frame(text, source, report, share)
    except LabelError as error:
        return ("error", str(error))
    config = SplitConfig()
    splits = assign_splits(frame["image_id"], config)
    version = label_version(
        {"AVA.txt": sha256_bytes(text.encode())}, {"dataset": "ava", **config.to_dict()}
    )
    report.notes.append("no generic_test.jpgl: test split drawn by hash (seed 0, fraction 0.1)")
    report.kept = len(frame)
    return ("ok", finalize_labels(frame, "ava", splits, version).to_pydict(), report)


@settings(max_examples=30, deadline=None)
@given(ava_texts(), st.integers(8, 400))
def test_engines_agree_on_generated_files(text: str, blocksize: int) -> None:
    """Same table and drops (a malformed line named by the same line number), or same error,
    under both engines in blocks as when the whole file is parsed at once.

    A share of 0.5 keeps most files with a malformed line going (the threshold is checked
    once on the whole file, after either engine; test_malformed_lines_deep_in_file... checks it).
    """
    share = 0.5
    root = f"memory:///labels-prop-{next(ROOTS)}"
    with fsspec.open(f"{root}/AVA.txt", "wb") as handle:
        handle.write(text.encode())
    try:
        expected = _reference(text, f"{root}/AVA.txt", share)
        assert _outcome("pandas", root, blocksize, share) == expected
        assert _outcome("dask", root, blocksize, share) == expected
    finally:
        MEMORY.rm(root[len("memory://") :], recursive=True)


def _good_lines(count: int) -> list[str]:
    return [_line(i, str(100 + i), [i % 3] * 10, [1, 2, 3], " ") for i in range(1, count + 1)]


@pytest.mark.parametrize("engine", sorted(LABEL_ENGINES))
def test_malformed_lines_deep_in_file_are_dropped_naming_them(engine: str, tmp_path: Path) -> None:
    lines = _good_lines(240)
    lines[36] = "37 9 1 1"
    lines[99] = "100 9 1 1 1 1 1 1 1 1 1 y 0 0 5"
    lines[199] = "200 9 1 1 1 1 1 1 1 1 1 -1 0 0 5"
    (tmp_path / "AVA.txt").write_text("\n".join(lines) + "\n")
    options = EngineOptions(engine=engine, blocksize=1024)  # 8 blocks with dask
    result = build_ava(tmp_path, None, SplitConfig(), options, max_malformed_share=0.02)
    source = str(tmp_path / "AVA.txt")
    assert result.report.dropped["malformed_line"] == 3
    assert [example.split(": ", 1)[0] for example in result.report.examples["malformed_line"]] == [
        f"{source}:37",
        f"{source}:100",
        f"{source}:200",
    ]
    assert "expected 15 fields, got 4" in result.report.examples["malformed_line"][0]
    assert "negative" in result.report.examples["malformed_line"][2]
    assert result.table.num_rows == result.report.kept
    with pytest.raises(LabelError, match=r"3 of 240 lines .*line\(s\) 37, 100, 200;"):
        build_ava(tmp_path, None, SplitConfig(), options, max_malformed_share=0.01)


def _write(url: str, text: str) -> None:
    fs, inner = fsspec.core.url_to_fs(url)
    fs.makedirs(inner.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(inner, text.encode())


def _write_release(root: str) -> None:
    """30 good lines (ids 101..130, every third without votes), 103 repeated, split lists."""
    lines = [*_good_lines(30), _line(31, "103", [1] * 10, [0, 0, 1], " "), ""]
    _write(f"{root}/AVA.txt", "\n".join(lines))
    _write(f"{root}/lists/generic_test.jpgl", "101\n104\n")
    _write(f"{root}/lists/generic_ls_train.jpgl", "\n".join(str(i) for i in range(102, 125)))


def test_remote_release_gives_the_same_table_under_both_engines(
    memory_root: str, tmp_path: Path
) -> None:
    _write_release(memory_root)
    _write_release(str(tmp_path))
    manifest = pa.table(
        {
            "image_id": [str(i) for i in range(101, 128)],
            "width": pa.array([None, *[64] * 26], pa.int32()),
        }
    )
    config = SplitConfig(seed=5)
    local = build_ava(tmp_path, manifest, config, EngineOptions(engine="pandas"))
    for engine in ("pandas", "dask", "auto"):
        result = build_ava(memory_root, manifest, config, EngineOptions(engine, blocksize=100))
        assert result.table.equals(local.table)
        assert result.report == local.report
    assert dict(local.report.dropped) == {
        "duplicate_id": 1,
        "zero_votes": 9,
        "not_in_split_lists": 4,
        "undecodable_image": 1,
    }
    assert local.table.num_rows == local.report.kept == 15


def test_auto_picks_dask_for_remote_or_large_input(memory_root: str, tmp_path: Path) -> None:
    (tmp_path / "AVA.txt").write_text("\n".join(_good_lines(5)))
    local = str(tmp_path / "AVA.txt")
    assert choose_engine(local, EngineOptions()) == "pandas"
    assert choose_engine(local, EngineOptions(memory_budget=10)) == "dask"
    assert choose_engine(f"{memory_root}/AVA.txt", EngineOptions()) == "dask"
    assert choose_engine(f"{memory_root}/AVA.txt", EngineOptions(engine="pandas")) == "pandas"
    with pytest.raises(ConfigError, match="--engine"):
        choose_engine(local, EngineOptions(engine="spark"))


def test_cli_remote_raw_and_memory_budget(
    memory_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_release(memory_root)
    _write_release(str(tmp_path / "raw"))
    used: list[str] = []
    dask_engine = LABEL_ENGINES["dask"]
    monkeypatch.setitem(
        LABEL_ENGINES, "dask", lambda *args: used.append("dask") or dask_engine(*args)
    )
    raw = str(tmp_path / "raw")
    remote, small, local = (str(tmp_path / f"{name}.parquet") for name in ("r", "s", "l"))
    assert run(["--dataset", "ava", "--raw", memory_root, "--out", remote]) == 0
    assert run(["--dataset", "ava", "--raw", raw, "--out", small, "--memory-budget", "100B"]) == 0
    assert run(["--dataset", "ava", "--raw", raw, "--out", local]) == 0
    assert used == ["dask", "dask"]
    assert pq.read_table(remote).equals(pq.read_table(local))
    assert pq.read_table(small).equals(pq.read_table(local))


@pytest.mark.parametrize(
    "argv",
    [
        ["--dataset", "folder", "--engine", "dask"],
        ["--dataset", "ava", "--memory-budget", "12XB"],
        ["--dataset", "ava", "--engine", "spark"],
    ],
)
def test_cli_bad_engine_arguments_exit_2(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run([*argv, "--raw", str(tmp_path), "--out", str(tmp_path / "x.parquet")])
    assert exit_info.value.code == 2
    assert argv[2] in capsys.readouterr().err


def test_cli_remote_raw_is_ava_only(memory_root: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run(["--dataset", "folder", "--raw", memory_root, "--out", "x.parquet"])
    assert "only supported with --dataset ava" in capsys.readouterr().err
