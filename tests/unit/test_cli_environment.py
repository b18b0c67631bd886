"""Every CLI refuses a missing input, a file in the way or an output it cannot create in one
line (exit 1; argument errors stay exit 2) before any model is loaded, and writes nothing."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from features.store import compaction, convert, query, verify
from features.training import evaluation
from jobs import evaluate, predict, recalibrate, train
from pipelines import demo, labels, manifest, sample
from tests.helpers.cli_errors import one_error_line, tree
from tests.unit.test_store import SMALL_WIDE, new_view

Run = Callable[[Sequence[str] | None], int]
AVA_LINES = "".join(f"{i} img{i:04d} 0 1 2 3 4 3 2 1 0 0 0 0 1\n" for i in range(1, 4))
# The kernel refuses new entries under /proc whatever the user (the tests may run as root).
NO_ENTRY = "(No such file or directory)"


@pytest.fixture(scope="module")
def ground(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Inputs of every kind: a file, an empty folder, a store with a view, labels and runs."""
    root = tmp_path_factory.mktemp("ground")
    (root / "file").write_text("not a table")
    (root / "folder").mkdir()
    (root / "labels.parquet").write_text("exists; its bytes are read only after the checks")
    (root / "AVA.txt").write_text(AVA_LINES)
    new_view(str(root / "store"), "zarr", SMALL_WIDE, 5, 2)
    config = {
        "store": str(root / "store"),
        "view": SMALL_WIDE.name,
        "labels": str(root / "AVA.txt"),
    }
    (root / "run").mkdir()
    (root / "run" / "run.json").write_text(json.dumps({"config": config}))
    (root / "badrun").mkdir()
    (root / "badrun" / "run.json").write_text("{}")
    return root


@pytest.fixture(autouse=True)
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the run gets as far as loading a head or building a backbone."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the run loaded a model before checking its environment")

    monkeypatch.setattr(evaluation, "load_keras_model", refuse)
    monkeypatch.setattr(predict, "build_scoring_model", refuse)


LABELS = ["--dataset", "ava", "--raw", "{g}/folder"]
STORE_VIEW = ["--store", "{g}/store", "--view", SMALL_WIDE.name]
RECALIBRATE = ["--labels", "{g}/labels.parquet", "--predictions", "{g}/labels.parquet"]
# (CLI, argv with {g} for the ground folder, exit code, the error line; '...' ends a prefix)
CASES: dict[str, tuple[Run, list[str], int, str]] = {
    "labels-missing-manifest": (
        labels.run,
        [*LABELS, "--manifest", "{g}/nope.parquet", "--out", "{g}/out.parquet"],
        1,
        "--manifest {g}/nope.parquet: no such file",
    ),
    "labels-out-under-a-file": (
        labels.run,
        [*LABELS, "--out", "{g}/file/out.parquet"],
        1,
        "--out {g}/file/out.parquet: {g}/file is a file, not a folder",
    ),
    "labels-out-a-folder": (
        labels.run,
        [*LABELS, "--out", "{g}/folder"],
        1,
        "--out {g}/folder: is a folder, not a file",
    ),
    "labels-out-uncreatable": (
        labels.run,
        [*LABELS, "--out", "/proc/mlsp/out.parquet"],
        1,
        f"--out /proc/mlsp/out.parquet: cannot create the folder /proc/mlsp {NO_ENTRY}",
    ),
    "manifest-missing-images": (
        manifest.run,
        ["--images", "{g}/nope", "--out", "{g}/m.parquet"],
        1,
        "--images {g}/nope: no such folder",
    ),
    "manifest-images-a-file": (
        manifest.run,
        ["--images", "{g}/file", "--out", "{g}/m.parquet"],
        1,
        "--images {g}/file: is a file, not a folder",
    ),
    "manifest-out-unwritable": (
        manifest.run,
        ["--images", "{g}/folder", "--out", "/proc/m.parquet"],
        1,
        f"--out /proc/m.parquet: cannot write in /proc {NO_ENTRY}",
    ),
    "sample-out-a-file": (
        sample.run,
        ["--out", "{g}/file", "--n", "1"],
        1,
        "--out {g}/file: {g}/file is a file, not a folder",
    ),
    "sample-out-uncreatable": (
        sample.run,
        ["--out", "/proc/mlsp-sample", "--n", "1"],
        1,
        f"--out /proc/mlsp-sample: cannot create the folder {NO_ENTRY}",
    ),
    "demo-out-uncreatable": (
        demo.run,
        ["--out", "/proc/mlsp-demo"],
        1,
        f"--out /proc/mlsp-demo: cannot create the folder {NO_ENTRY}",
    ),
    "recalibrate-missing-labels": (
        recalibrate.run,
        ["--labels", "{g}/nope.parquet", "--predictions", "{g}/labels.parquet", "--out", "{g}/r"],
        1,
        "--labels {g}/nope.parquet: no such file",
    ),
    "recalibrate-labels-a-folder": (
        recalibrate.run,
        ["--labels", "{g}/folder", "--predictions", "{g}/labels.parquet", "--out", "{g}/r"],
        1,
        "--labels {g}/folder: is a folder, not a file",
    ),
    "recalibrate-missing-predictions": (
        recalibrate.run,
        ["--labels", "{g}/labels.parquet", "--predictions", "{g}/nope.parquet", "--out", "{g}/r"],
        1,
        "--predictions {g}/nope.parquet: no such file",
    ),
    "recalibrate-labels-not-parquet": (  # was a pyarrow traceback
        recalibrate.run,
        ["--labels", "{g}/file", "--predictions", "{g}/file", "--out", "{g}/new/r"],
        1,
        "--labels {g}/file: not a Parquet file (...",
    ),
    "recalibrate-out-under-a-file": (
        recalibrate.run,
        [*RECALIBRATE, "--out", "{g}/file/r"],
        1,
        "--out {g}/file/r: {g}/file is a file, not a folder",
    ),
    "recalibrate-no-predictions": (  # now before --out is probed
        recalibrate.run,
        ["--labels", "{g}/labels.parquet", "--out", "{g}/new/r"],
        2,
        "--predictions is required unless --apply is given",
    ),
    "evaluate-missing-run": (
        evaluate.run,
        ["--run", "{g}/nope"],
        2,
        "--run {g}/nope: no run.json (not a finished training run)",
    ),
    "evaluate-run-json-not-a-run": (  # was a KeyError traceback
        evaluate.run,
        ["--run", "{g}/badrun"],
        2,
        "--run {g}/badrun: run.json is not a training run's record (KeyError('config'))",
    ),
    "evaluate-missing-store": (
        evaluate.run,
        ["--run", "{g}/run", "--store", "{g}/nope"],
        1,
        "--store {g}/nope: no such folder",
    ),
    "evaluate-store-a-file": (
        evaluate.run,
        ["--run", "{g}/run", "--store", "{g}/file"],
        1,
        "--store {g}/file: is a file, not a folder",
    ),
    "evaluate-labels-not-parquet": (  # was a pyarrow traceback
        evaluate.run,
        ["--run", "{g}/run", "--labels", "{g}/labels.parquet"],
        1,
        "--labels {g}/labels.parquet: not a Parquet file (...",
    ),
    "evaluate-out-under-a-file": (
        evaluate.run,
        ["--run", "{g}/run", "--out", "{g}/file/eval"],
        1,
        "--out {g}/file/eval: {g}/file is a file, not a folder",
    ),
    "evaluate-out-uncreatable": (
        evaluate.run,
        ["--run", "{g}/run", "--out", "/proc/mlsp-eval"],
        1,
        f"--out /proc/mlsp-eval: cannot create the folder {NO_ENTRY}",
    ),
    "train-missing-store": (
        train.run,
        ["--store", "{g}/nope", "--view", "wide", "--labels", "{g}/AVA.txt", "--out", "{g}/o"],
        1,
        "--store {g}/nope: no such folder",
    ),
    "predict-missing-run": (
        predict.run,
        ["--run", "{g}/nope", "--images", "{g}/folder", "--out", "{g}/p.parquet"],
        2,
        "--run {g}/nope: no run.json (not a finished training run)",
    ),
    "predict-images-not-a-manifest": (  # was named --manifest, after the head was loaded
        predict.run,
        ["--run", "{g}/run", "--images", "{g}/file", "--out", "{g}/p.parquet"],
        1,
        "--images {g}/file: not a Parquet file (...",
    ),
    "predict-out-a-folder": (
        predict.run,
        ["--run", "{g}/run", "--images", "{g}/folder", "--out", "{g}/folder"],
        1,
        "--out {g}/folder: is a folder, not a file",
    ),
    "predict-out-uncreatable": (
        predict.run,
        ["--run", "{g}/run", "--images", "{g}/folder", "--out", "/proc/mlsp/p.parquet"],
        1,
        f"--out /proc/mlsp/p.parquet: cannot create the folder /proc/mlsp {NO_ENTRY}",
    ),
    "predict-save-model-under-a-file": (
        predict.run,
        ["--run", "{g}/run", "--images", "{g}/folder", "--save-model", "{g}/file/m.keras"],
        1,
        "--save-model {g}/file/m.keras: {g}/file is a file, not a folder",
    ),
    "query-missing-store": (
        query.run,
        ["--store", "{g}/nope"],
        1,
        "--store {g}/nope: no such folder",
    ),
    "query-store-a-file": (
        query.run,
        ["--store", "{g}/file"],
        1,
        "--store {g}/file: is a file, not a folder",
    ),
    "verify-missing-store": (
        verify.run,
        ["--store", "{g}/nope"],
        1,
        "--store {g}/nope: no such folder",
    ),
    "compact-store-a-file": (
        compaction.run,
        ["--store", "{g}/file"],
        1,
        "--store {g}/file: is a file, not a folder",
    ),
    "convert-missing-store": (
        convert.run,
        ["--store", "{g}/nope", "--view", "wide", "--out", "{g}/c", "--to", "hdf5"],
        1,
        "--store {g}/nope: no such folder",
    ),
    "convert-out-under-a-file": (
        convert.run,
        [*STORE_VIEW, "--out", "{g}/file/c", "--to", "hdf5"],
        1,
        "--out {g}/file/c: {g}/file is a file, not a folder",
    ),
    "convert-out-uncreatable": (
        convert.run,
        [*STORE_VIEW, "--out", "/proc/mlsp-export", "--layout", "ava-mlsp"],
        1,
        f"--out /proc/mlsp-export: cannot create the folder {NO_ENTRY}",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_line_and_nothing_written(ground, capsys, case) -> None:
    run, argv, code, expected = CASES[case]
    before = tree(ground)
    assert run([part.replace("{g}", str(ground)) for part in argv]) == code
    line = one_error_line(capsys)
    expected = "error: " + expected.replace("{g}", str(ground))
    if expected.endswith("..."):
        assert line.startswith(expected[:-3]), line
    else:
        assert line == expected
    assert tree(ground) == before


def test_recalibrate_default_out_is_not_left_behind(ground, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)  # the default --out is ./recalibration
    assert recalibrate.run(
        ["--labels", str(ground / "file"), "--predictions", str(ground / "file")]
    )
    assert "not a Parquet file" in one_error_line(capsys)
    assert tree(tmp_path) == set()


def test_sample_refuses_a_url(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)  # Path('s3://b/s') would have been the local folder s3:/b/s
    with pytest.raises(SystemExit) as exit_info:
        sample.run(["--out", "s3://b/s"])
    assert exit_info.value.code == 2
    assert (
        "argument --out: --out must be a local path, got the URL 's3://b/s'"
        in capsys.readouterr().err
    )
    assert tree(tmp_path) == set()


def test_a_damaged_model_is_one_line(ground, monkeypatch, capsys) -> None:
    def damaged(path: str) -> None:
        raise ValueError(f"File not found: filepath={path}.\nNot a .keras zip file.")

    monkeypatch.setattr(evaluation, "load_keras_model", damaged)
    before = tree(ground)
    assert evaluate.run(["--run", str(ground / "run")]) == 2  # as a run without run.json
    assert one_error_line(capsys) == (
        f"error: --run {ground}/run: model.keras cannot be loaded (File not found: "
        f"filepath={ground}/run/model.keras. Not a .keras zip file.)"
    )
    assert tree(ground) == before
