"""What a Dataflow worker does differently: DoFns pickled into fresh processes, and only the
installed package (built from this repository) on the path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from features import files
from features.download.manifest import read_manifest
from features.extraction.shard import NO_DEVICE, ShardExtractor
from features.store.query import FeatureStore
from features.store.view import FeatureView
from pipelines import extract
from tests.helpers.extract_cli import NARROW, extract_argv

ROOT = Path(__file__).resolve().parents[2]
VIEW = NARROW
TIMING = ["read_ms", "decode_ms", "model_ms"]
PACKAGE_FILES = ["setup.py", "setup.cfg", "pyproject.toml", "README.md"]
PACKAGES = ["schemas", "features", "pipelines", "jobs", "orchestration", "benchmarks"]


def _assert_same_store(left: Path, right: Path) -> None:
    a, b = FeatureStore(str(left)), FeatureStore(str(right))
    assert a.table(VIEW).drop_columns(TIMING).equals(b.table(VIEW).drop_columns(TIMING))
    rows = FeatureView(str(left), VIEW).allocation.num_rows
    values_a = FeatureView(str(left), VIEW).array.read_range(0, rows)
    values_b = FeatureView(str(right), VIEW).array.read_range(0, rows)
    assert values_a.tobytes() == values_b.tobytes()  # bit for bit, NaN rows included


@pytest.fixture(scope="module")
def one_process_store(sample_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("one") / "store"
    assert extract.run(extract_argv(sample_manifest, store, "--direct_num_workers", "1")) == 0
    return store


def _where_a_new_process_places_work() -> str:
    """TensorFlow's own answer in a fresh process, as a worker is: the device an eager op ran
    on (default placement: the first visible GPU, else CPU:0). No product code involved."""
    probe = "import tensorflow as tf; print((tf.constant(1.0) * 2.0).device)"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env
    )
    return done.stdout.strip().splitlines()[-1].split("device:")[-1]


def test_multi_process_workers_build_the_same_store(
    sample_manifest: Path, one_process_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def not_here(self, shard):
        raise AssertionError("a shard ran in the launcher process, not in a worker process")

    monkeypatch.setattr(ShardExtractor, "process", not_here)  # workers import the real one
    store = tmp_path / "store"
    argv = extract_argv(
        sample_manifest,
        store,
        "--direct_running_mode=multi_processing",
        "--direct_num_workers",
        "2",
        "--summary-json",
        str(tmp_path / "summary.json"),
    )
    assert extract.run(argv) == 0
    _assert_same_store(one_process_store, store)
    markers = FeatureView(str(store), VIEW).committed().values()
    placed = _where_a_new_process_places_work()  # GPU:0 on a GPU host, CPU:0 elsewhere
    description = "gpu (" if placed.startswith("GPU") else "cpu (no GPU visible))"
    for marker in markers:  # the device TensorFlow placed the work on; none for broken files
        expected = f"{placed} ({description}" if marker.images_forwarded else NO_DEVICE
        assert marker.device.startswith(expected), (marker.shard, marker.device)
    devices = Counter(marker.device for marker in markers)
    assert NO_DEVICE in devices and len(devices) == 2  # the last shards hold only broken files
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["devices_used"] == dict(devices)


def test_manifest_sizes_that_miss_still_give_the_same_features(
    sample_manifest: Path, one_process_store: Path, tmp_path: Path
) -> None:
    """Rotated or mis-sized manifest rows leave the planned buckets and batch by real size."""
    table = read_manifest(str(sample_manifest))
    swapped = table.set_column(
        table.schema.get_field_index("width"), "width", table.column("height")
    ).set_column(table.schema.get_field_index("height"), "height", table.column("width"))
    manifest = tmp_path / "swapped.parquet"
    files.atomic_write_parquet(str(manifest), swapped)
    store = tmp_path / "store"
    assert extract.run(extract_argv(manifest, store, "--direct_num_workers", "1")) == 0
    expected = FeatureStore(str(one_process_store)).table(VIEW).drop_columns(TIMING)
    got = FeatureStore(str(store)).table(VIEW).drop_columns(TIMING)
    assert got.drop_columns(["features", "width", "height"]).equals(
        expected.drop_columns(["features", "width", "height"])
    )
    rows = FeatureView(str(store), VIEW).allocation.num_rows
    np.testing.assert_allclose(
        FeatureView(str(store), VIEW).array.read_range(0, rows).astype(np.float32),
        FeatureView(str(one_process_store), VIEW).array.read_range(0, rows).astype(np.float32),
        rtol=2.0**-10,
        atol=1e-6,
    )


def _build_wheel(tmp_path: Path) -> Path:
    """A wheel built from a copy of the repository's package files (no build/ in the tree)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in PACKAGE_FILES:
        shutil.copy2(ROOT / name, source / name)
    for name in PACKAGES:
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--wheel-dir",
            str(wheels),
            str(source),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("mlsp_feature_store-*.whl")
    return wheel


def _fresh_venv(tmp_path: Path) -> Path:
    """A new virtualenv that sees the test environment's dependencies (TF, Beam) but not this
    package: that site-packages joins through a plain path line, so its editable-install hook
    (if any) is never run."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def test_the_installed_package_runs_without_the_source_tree(
    sample_manifest: Path, one_process_store: Path, tmp_path: Path
) -> None:
    wheel = _build_wheel(tmp_path)
    python = _fresh_venv(tmp_path)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            # the test environment (visible through the .pth line) has this package already,
            # editable; without this pip would skip installing the wheel
            "--ignore-installed",
            "--no-deps",
            "--no-index",
            "--quiet",
            str(wheel),
        ],
        check=True,
    )
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    imported = subprocess.run(
        [
            str(python),
            "-c",
            "import pipelines.extract, features; print(pipelines.extract.__file__)",
        ],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
    )
    assert imported.returncode == 0, imported.stderr[-3000:]
    where = imported.stdout.strip()
    assert Path(where).is_relative_to(tmp_path / "venv"), where
    assert not Path(where).is_relative_to(ROOT)
    store = tmp_path / "store"
    run = subprocess.run(
        [str(python), "-m", "pipelines.extract", *extract_argv(sample_manifest, store)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    _assert_same_store(one_process_store, store)
