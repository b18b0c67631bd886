"""The labels CLI: exit codes, bad arguments, and the written table on a sample AVA release."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.labels import run
from pipelines.sample import write_sample
from pipelines.sample_datasets import write_ava_split_lists
from schemas.labels import LABELS_SCHEMA


def test_ava_sample_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_sample(tmp_path, n=8, seed=1, broken=False, min_side=40, max_side=60)
    ids = [line.split()[1] for line in (tmp_path / "AVA.txt").read_text().splitlines()]
    write_ava_split_lists(tmp_path, ids, seed=1, test_fraction=0.25)
    out = tmp_path / "labels.parquet"
    assert run(["--dataset", "ava", "--raw", str(tmp_path), "--out", str(out)]) == 0
    table = pq.read_table(out)
    assert table.schema.names == LABELS_SCHEMA.names
    test_ids = set((tmp_path / "generic_test.jpgl").read_text().split())
    splits = dict(zip(table.column("image_id").to_pylist(), table.column("split").to_pylist(),
                      strict=True))
    assert {i for i, s in splits.items() if s == "test"} == test_ids
    assert len(test_ids) == 2
    assert "labels: 8 rows" in capsys.readouterr().out


def _ava_lines(count: int) -> list[str]:
    return [f"{i} {100 + i} 1 1 1 1 1 1 1 1 1 1 0 0 1" for i in range(1, count + 1)]


def test_a_few_malformed_lines_are_dropped_and_summarised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _ava_lines(300)
    lines[122], lines[249] = "123 223 1 1", "250 350 1 1 1 1 1 1 1 1 1 z 0 0 1"
    (tmp_path / "AVA.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "l.parquet"
    assert run(["--dataset", "ava", "--raw", str(tmp_path), "--out", str(out)]) == 0
    assert pq.read_table(out).num_rows == 298
    captured = capsys.readouterr()
    summary = captured.out
    assert "labels: 298 rows" in summary
    assert "dropped malformed_line" in summary
    assert f"    {tmp_path / 'AVA.txt'}:123: expected 15 fields, got 4" in summary.splitlines()
    assert f"{tmp_path / 'AVA.txt'}:250: non-numeric" in summary
    warned = [line for line in captured.err.splitlines() if " WARNING " in line]
    assert [line.split("AVA.txt:")[1][:4] for line in warned] == ["123:", "250:"]


@pytest.mark.parametrize(
    ("lines", "flags", "count"),
    [
        (["1 5 1 1 1 1 1 1 1 1 1 1 0 0 1", "2 6 1 1"], [], "1 of 2"),  # 50 % malformed
        (["a,b", "1,2"], ["--max-malformed-share", "0.9"], "2 of 2"),  # every line: wrong file
        ([*_ava_lines(99), "100 9 1"], ["--max-malformed-share", "0"], "1 of 100"),
    ],
)
def test_too_many_malformed_lines_exit_1_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lines: list[str], flags: list[str],
    count: str
) -> None:
    (tmp_path / "AVA.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "l.parquet"
    code = run(["--dataset", "ava", "--raw", str(tmp_path), "--out", str(out), *flags])
    assert code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1
    assert f"AVA.txt: {count} lines are malformed (over --max-malformed-share" in errors[0]
    assert "first at line(s) " in errors[0]
    assert not out.exists()


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--val-fraction", "1.2"), ("--test-fraction", "x"), ("--max-malformed-share", "1"),
     ("--max-malformed-share", "-0.1"), ("--max-malformed-share", "1%")],
)
def test_bad_arguments_exit_2_naming_the_flag(tmp_path: Path, flag: str, value: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run(["--dataset", "ava", "--raw", str(tmp_path), "--out", "x.parquet", flag, value])
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err


def test_sample_cli_writes_extra_datasets(tmp_path: Path) -> None:
    from pipelines.sample import run as sample_run

    assert sample_run(["--out", str(tmp_path), "--n", "4", "--min-side", "40", "--max-side", "48",
                       "--datasets"]) == 0
    for name in ("generic_test.jpgl", "generic_ls_train.jpgl", "scut/SCUT-FBP5500_v2.zip",
                 "shifted/labels.csv", "shifted/predictions.parquet", "shifted/truth.json"):
        assert (tmp_path / name).is_file(), name
    out = tmp_path / "shifted.parquet"
    assert run(["--dataset", "folder", "--raw", str(tmp_path / "shifted"), "--out", str(out)]) == 0
    assert pq.read_table(out).num_rows == 200
