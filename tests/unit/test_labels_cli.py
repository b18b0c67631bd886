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


def test_malformed_file_is_exit_1_with_line(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "AVA.txt").write_text("1 5 1 1 1 1 1 1 1 1 1 1 0 0 1\n2 6 1 1\n")
    code = run(["--dataset", "ava", "--raw", str(tmp_path), "--out", str(tmp_path / "l.parquet")])
    assert code == 1
    assert "AVA.txt:2: expected 15 fields, got 4" in capsys.readouterr().err
    assert not (tmp_path / "l.parquet").exists()


@pytest.mark.parametrize(("flag", "value"), [("--val-fraction", "1.2"), ("--test-fraction", "x")])
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
