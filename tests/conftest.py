"""Shared fixtures: generated sample data and the random-weights id used throughout the tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TQDM_DISABLE", "1")

RANDOM_WEIGHTS = "random:0"


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 good images of mixed sizes and modes plus the 5 broken files, with AVA.txt."""
    from pipelines.sample import write_sample

    out = tmp_path_factory.mktemp("sample")
    write_sample(out, n=12, seed=7, broken=True, min_side=80, max_side=200)
    return out


@pytest.fixture(scope="session")
def sample_manifest(sample_dir: Path) -> Path:
    """Manifest of the sample images."""
    from features import files
    from features.download.manifest import build_manifest, entries_from_folder

    table = build_manifest(entries_from_folder(sample_dir / "images"), "sample")
    path = sample_dir / "manifest.parquet"
    files.atomic_write_parquet(str(path), table)
    return path
