"""Dataset-level downloads: SCUT zip over HTTP with sha256, AVA from archives, Beam, sink faults."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from benchmarks.fault_server import FaultServer, Route
from features import files
from pipelines import download, labels
from pipelines.sample import write_sample
from pipelines.sample_datasets import write_ava_split_lists, write_scut_zip


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as running:
        yield running


def _fail_replace_once(monkeypatch: pytest.MonkeyPatch, suffix: str) -> list[str]:
    real_replace = os.replace
    failed: list[str] = []

    def flaky(source: Any, target: Any) -> None:
        if str(target).endswith(suffix) and not failed:
            failed.append(str(target))
            raise OSError(28, "No space left on device (injected)")
        real_replace(source, target)

    monkeypatch.setattr(files.os, "replace", flaky)
    return failed


def test_scut_zip_over_http_then_labels(server: FaultServer, tmp_path: Path) -> None:
    archive = write_scut_zip(tmp_path, n_per_subset=2, n_raters=3, seed=1, side=32)
    data = archive.read_bytes()
    server.routes["SCUT-FBP5500_v2.zip"] = Route(data, faults=["500"])
    dest = tmp_path / "scut"
    argv = ["--dataset", "scut-fbp5500", "--dest", str(dest), "--source",
            server.url("SCUT-FBP5500_v2.zip"), "--backoff", "0.01"]
    assert download.run([*argv, "--sha256", "0" * 64]) == 1  # digest mismatch is refused
    assert download.run([*argv, "--sha256", hashlib.sha256(data).hexdigest()]) == 0
    manifest = pq.read_table(dest / "manifest.parquet")
    assert sorted(manifest.column("image_id").to_pylist()) == sorted(
        f"{s}{i}" for s in ("AF", "AM", "CF", "CM") for i in (1, 2))
    assert set(manifest.column("split").to_pylist()) == {"train", "test"}
    out = tmp_path / "labels.parquet"
    assert labels.run(["--dataset", "scut-fbp5500", "--raw", str(dest / "raw"), "--manifest",
                       str(dest / "manifest.parquet"), "--out", str(out)]) == 0
    assert pq.read_table(out).num_rows == 8


def test_ava_from_local_archive_with_splits(tmp_path: Path) -> None:
    sample = tmp_path / "sample"
    write_sample(sample, n=5, seed=2, broken=False, min_side=40, max_side=60)
    ids = [line.split()[1] for line in (sample / "AVA.txt").read_text().splitlines()]
    test_list, _ = write_ava_split_lists(sample, ids, seed=2, test_fraction=0.4)
    import shutil

    archive = shutil.make_archive(str(tmp_path / "images"), "zip", sample / "images")
    dest = tmp_path / "ava"
    assert download.run(["--dataset", "ava", "--dest", str(dest), "--source", archive,
                         "--list", str(sample / "AVA.txt"), "--split-file", str(test_list)]) == 0
    manifest = pq.read_table(dest / "manifest.parquet").to_pylist()
    assert {row["image_id"] for row in manifest} == set(ids)
    assert {row["image_id"] for row in manifest if row["split"] == "test"} == set(
        test_list.read_text().split())
    assert (dest / "raw" / "AVA.txt").read_bytes() == (sample / "AVA.txt").read_bytes()


def test_beam_direct_runner_matches_local(server: FaultServer, tmp_path: Path) -> None:
    sample = tmp_path / "sample"
    write_sample(sample, n=6, seed=3, broken=False, min_side=40, max_side=60)
    for path in (sample / "images").iterdir():
        server.routes[path.name] = Route(path.read_bytes())
    results = {}
    for runner, flags in (("local", []), ("direct", ["--shard-size", "2"])):  # Beam work units
        dest = tmp_path / runner
        assert download.run(["--dataset", "ava", "--dest", str(dest), "--list",
                             str(sample / "AVA.txt"), "--source", server.url("{image_id}.jpg"),
                             "--runner", runner, "--workers", "2", *flags]) == 0
        results[runner] = pq.read_table(dest / "downloads.parquet")
        assert not (dest / "_download_parts").exists()
    assert results["local"].equals(results["direct"])


def test_failed_image_write_is_retried_exactly(server: FaultServer, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    sample = tmp_path / "sample"
    write_sample(sample, n=3, seed=4, broken=False, min_side=40, max_side=60)
    for path in (sample / "images").iterdir():
        server.routes[path.name] = Route(path.read_bytes())
    failed = _fail_replace_once(monkeypatch, "100002.jpg")
    dest = tmp_path / "dest"
    argv = ["--dataset", "ava", "--dest", str(dest), "--list", str(sample / "AVA.txt"),
            "--source", server.url("{image_id}.jpg")]
    assert download.run(argv) == 0 and failed
    rows = {r["image_id"]: r for r in pq.read_table(dest / "downloads.parquet").to_pylist()}
    assert rows["100002"]["status"] == "write_error"
    assert sorted(p.name for p in (dest / "images").iterdir()) == ["100001.jpg", "100003.jpg"]
    assert download.run([*argv, "--retry-failed"]) == 0
    for name in ("100001.jpg", "100002.jpg", "100003.jpg"):
        assert (dest / "images" / name).read_bytes() == (sample / "images" / name).read_bytes()


def test_failed_status_and_labels_writes_leave_nothing_then_rerun_is_exact(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_sample(tmp_path, n=4, seed=5, broken=False, min_side=40, max_side=60)
    out = tmp_path / "labels.parquet"
    argv = ["--dataset", "ava", "--raw", str(tmp_path), "--out", str(out)]
    assert labels.run(argv) == 0
    expected = pq.read_table(out)
    out.unlink()
    _fail_replace_once(monkeypatch, "labels.parquet")
    with pytest.raises(OSError, match="injected"):
        labels.run(argv)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert labels.run(argv) == 0
    assert pq.read_table(out).equals(expected)
