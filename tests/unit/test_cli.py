"""CLI contracts: --help everywhere, exit 2 naming the argument, job errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from features import query
from pipelines import extract, manifest, sample


@pytest.mark.parametrize(
    "module", ["pipelines.extract", "pipelines.manifest", "pipelines.sample", "features.query"]
)
def test_help(module) -> None:
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "usage:" in result.stdout


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (
            ["--manifest", "m", "--store", "s", "--view", "irnv2_mlsp_narrow", "--shard-size", "0"],
            "--shard-size",
        ),
        (["--manifest", "m", "--store", "s", "--view", "bogus"], "--view"),
        (
            ["--manifest", "m", "--store", "s", "--view", "irnv2_mlsp_narrow", "--runner", "nope"],
            "--runner",
        ),
        (["--manifest", "m", "--store", "s", "--view", "irnv2_mlsp_narrow", "stray"], "stray"),
        (["--store", "s", "--view", "irnv2_mlsp_narrow"], "--manifest"),
    ],
)
def test_extract_bad_arguments_exit_2_naming_them(argv, named, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        extract.run(argv)
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err


def test_extract_bad_weights_and_missing_manifest_are_clean_errors(tmp_path, capsys) -> None:
    code = extract.run(
        [
            "--manifest",
            str(tmp_path / "none.parquet"),
            "--store",
            str(tmp_path / "s"),
            "--view",
            "irnv2_mlsp_narrow",
            "--weights",
            "random:0",
        ]
    )
    assert code == 1
    assert "--manifest" in capsys.readouterr().err
    sample.run(["--out", str(tmp_path), "--n", "1"])
    manifest.run(["--images", str(tmp_path / "images"), "--out", str(tmp_path / "m.parquet")])
    code = extract.run(
        [
            "--manifest",
            str(tmp_path / "m.parquet"),
            "--store",
            str(tmp_path / "s"),
            "--view",
            "irnv2_mlsp_narrow",
            "--weights",
            "randm:0",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--weights 'randm:0'" in err and "Traceback" not in err


def test_query_and_sample_argument_errors(tmp_path, capsys) -> None:
    assert query.run(["--store", str(tmp_path)]) == 1
    assert "not a feature store" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        sample.run(["--out", str(tmp_path), "--n", "-3"])
    assert exit_info.value.code == 2 and "--n" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        query.run(["--store", str(tmp_path), "--limit", "0"])
    assert "--limit" in capsys.readouterr().err
