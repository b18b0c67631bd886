"""No flag is accepted and then ignored: each such combination exits 2 naming both, first."""

from __future__ import annotations

from pathlib import Path

import pytest

from features.cli import CliRun
from features.store import convert, query
from jobs import evaluate, predict
from pipelines import download, extract, labels

DOWNLOAD = ["--dest", "{tmp}/dest", "--source", "{tmp}/images"]
LABELS = ["--raw", "{tmp}", "--out", "{tmp}/labels.parquet"]
BATCH = ["--batch-size", "8"]
EXPORT_RENAMED = ["--layout", "ava-mlsp", "--view-name", "w"]
# (CLI, argv, the unused flag, the flag or choice that leaves it unused)
REFUSED: dict[str, tuple[CliRun, list[str], str, str]] = {
    "download --list with scut": (
        download.run,
        ["--dataset", "scut-fbp5500", *DOWNLOAD, "--list", "{tmp}/AVA.txt"],
        "--list",
        "--dataset scut-fbp5500",
    ),
    "download --split-file with folder": (
        download.run,
        ["--dataset", "folder", *DOWNLOAD, "--list", "x.csv", "--split-file", "t.jpgl"],
        "--split-file",
        "--dataset folder",
    ),
    "download --sha256 with ava": (
        download.run,
        ["--dataset", "ava", *DOWNLOAD, "--list", "AVA.txt", "--sha256", "ab" * 32],
        "--sha256",
        "--dataset ava",
    ),
    "download --shard-size with the local runner": (
        download.run,
        ["--dataset", "ava", *DOWNLOAD, "--list", "AVA.txt", "--shard-size", "256"],
        "--shard-size",
        "--runner local",
    ),
    "labels --memory-budget with scut": (
        labels.run,
        ["--dataset", "scut-fbp5500", *LABELS, "--memory-budget", "1GiB"],
        "--memory-budget",
        "--dataset scut-fbp5500",
    ),
    "labels --memory-budget with --engine pandas": (
        labels.run,
        ["--dataset", "ava", *LABELS, "--engine", "pandas", "--memory-budget", "1GiB"],
        "--memory-budget",
        "--engine pandas",
    ),
    "labels --max-malformed-share with folder": (
        labels.run,
        ["--dataset", "folder", *LABELS, "--max-malformed-share", "0.1"],
        "--max-malformed-share",
        "--dataset folder",
    ),
    "labels --engine pandas with folder": (
        labels.run,
        ["--dataset", "folder", *LABELS, "--engine", "pandas"],
        "--engine",
        "--dataset ava",
    ),
    "evaluate --threshold with --metrics scut": (
        evaluate.run,
        ["--run", "{tmp}/run", "--metrics", "scut", "--threshold", "5"],
        "--threshold",
        "--metrics scut",
    ),
    "predict --batch-size without --out": (
        predict.run,
        ["--run", "{tmp}/run", "--images", "{tmp}", "--save-model", "{tmp}/m.keras", *BATCH],
        "--batch-size",
        "--out",
    ),
    "query --ids without --view": (
        query.run,
        ["--store", "{tmp}/store", "--ids", "1"],
        "--ids",
        "--view",
    ),
    "query --snapshots without --view": (
        query.run,
        ["--store", "{tmp}/store", "--snapshots"],
        "--snapshots",
        "--view",
    ),
    "query --where with --snapshots": (
        query.run,
        ["--store", "{tmp}/store", "--view", "v", "--snapshots", "--where", "status == 'ok'"],
        "--where",
        "--snapshots",
    ),
    "query --limit with --ids": (
        query.run,
        ["--store", "{tmp}/store", "--view", "v", "--ids", "1", "--limit", "10"],
        "--limit",
        "--ids",
    ),
    "convert --view-name with --layout": (
        convert.run,
        ["--store", "{tmp}/store", "--view", "v", "--out", "{tmp}/out", *EXPORT_RENAMED],
        "--view-name",
        "--layout ava-mlsp",
    ),
    "extract --lease-ttl with --dry-run": (
        extract.run,
        [
            "--manifest",
            "{tmp}/m.parquet",
            "--store",
            "{tmp}/s",
            "--view",
            "irnv2_mlsp_narrow",
            "--dry-run",
            "--lease-ttl",
            "30",
        ],
        "--lease-ttl",
        "--dry-run",
    ),
    "extract --summary-json with --dry-run": (
        extract.run,
        [
            "--manifest",
            "{tmp}/m.parquet",
            "--store",
            "{tmp}/s",
            "--view",
            "irnv2_mlsp_narrow",
            "--dry-run",
            "--summary-json",
            "{tmp}/summary.json",
        ],
        "--summary-json",
        "--dry-run",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_an_unused_flag_exits_2_naming_it_before_any_work(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, argv, unused, context = REFUSED[case]
    with pytest.raises(SystemExit) as exit_info:
        run([arg.replace("{tmp}", str(tmp_path)) for arg in argv])
    assert exit_info.value.code == 2
    (error,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert f"argument {unused}" in error and context in error
    assert sorted(tmp_path.iterdir()) == []  # nothing read or written: no dest, out or store
