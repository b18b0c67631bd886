"""CLI contracts: --help everywhere, exit 2 naming the argument, job errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from features.store import query
from pipelines import extract, manifest, sample


@pytest.mark.parametrize(
    "module", ["pipelines.extract", "pipelines.manifest", "pipelines.sample", "features.store.query"]
)
def test_help(module) -> None:
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "usage:" in result.stdout


def imported_modules(importtime_log: str) -> set[str]:
    """Module names from `python -X importtime` stderr ('import time: self | cumulative | name')."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in importtime_log.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }


@pytest.mark.parametrize("job", ["jobs.train", "jobs.evaluate", "jobs.predict", "jobs.recalibrate"])
def test_job_help_imports_no_tensorflow_or_keras(job) -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", job, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and f"python -m {job}" in result.stdout
    modules = imported_modules(result.stderr)
    assert "features.cli" in modules  # the log is parsed: the job's own imports are listed
    heavy = sorted(m for m in modules if m.split(".")[0] in {"tensorflow", "keras", "tf_keras"})
    assert heavy == [], f"{job} --help imported {heavy[:5]}"


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
        (
            ["--manifest", "m", "--store", "s", "--view", "irnv2_mlsp_wide", "--compression=gzip"],
            "--compression",
        ),
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
