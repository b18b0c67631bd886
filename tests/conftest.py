"""Shared fixtures: generated sample data and the random-weights id used throughout the tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TQDM_DISABLE", "1")
# Before anything imports gcsfs: its default "gs" filesystem (ExtendedGcsFileSystem) probes each
# bucket over gRPC and stalls about a minute per call against the GCS emulator of the tests.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

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


@pytest.fixture(scope="session")
def object_store_servers() -> Iterator[dict[str, Any]]:
    """moto (s3) and fake-gcs-server (gs) on 127.0.0.1, started once per session.

    fsspec.config.conf and the FSSPEC_S3 / FSSPEC_GS variables name them, so code that sees only
    s3:// or gs:// URLs, in this process or a child, reaches them.
    """
    from benchmarks import object_store_servers as object_stores

    servers = {"s3": object_stores.start_moto_s3(), "gs": object_stores.start_fake_gcs()}
    saved_conf = {protocol: fsspec.config.conf.get(protocol) for protocol in servers}
    saved_env = {name: os.environ.get(name) for name in ("FSSPEC_S3", "FSSPEC_GS")}
    for protocol, server in servers.items():
        fsspec.config.conf[protocol] = object_stores.fsspec_options(protocol, server.endpoint_url)
    os.environ.update(object_stores.subprocess_environment(servers))
    yield servers
    for protocol, conf in saved_conf.items():
        fsspec.config.conf.pop(protocol, None)
        if conf is not None:
            fsspec.config.conf[protocol] = conf
    for name, value in saved_env.items():
        os.environ.pop(name, None)
        if value is not None:
            os.environ[name] = value
    for server in servers.values():
        server.stop()


@pytest.fixture(params=["s3", "gs"])
def bucket(request: pytest.FixtureRequest, object_store_servers: dict[str, Any]) -> Any:
    """A fresh, empty bucket on the local S3 or GCS server (both, as two test cases)."""
    from benchmarks import object_store_servers as object_stores

    protocol = request.param
    return object_stores.new_bucket(protocol, object_store_servers[protocol])
