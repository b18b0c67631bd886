"""Downloads against a local fault-injecting HTTP server: statuses, retries, atomicity, resume."""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from benchmarks.fault_server import FaultServer, Route
from features.download.fetch import FetchConfig, fetch
from features.download.items import DownloadItem, process_item
from pipelines.download import run
from schemas.labels import DOWNLOADS_SCHEMA

FAST = FetchConfig(timeout=0.5, deadline=2.0, retries=3, backoff=0.01, backoff_max=2.0)


def jpeg(seed: int, side: int = 48) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as running:
        yield running


def _item(server: FaultServer, name: str, **kwargs: object) -> DownloadItem:
    return DownloadItem(name, server.url(f"{name}.jpg"), f"{name}.jpg", **kwargs)  # type: ignore[arg-type]


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


@pytest.mark.parametrize(
    ("route", "status", "http_status", "attempts"),
    [
        (Route(b"", always="404"), "not_found", 404, 1),
        (Route(jpeg(1), faults=["500"]), "ok", 200, 2),
        (Route(jpeg(2), always="500"), "http_error", 500, 4),
        (Route(jpeg(3), faults=["reset", "reset"]), "ok", 200, 3),
        (Route(jpeg(4), always="reset"), "connection_error", None, 4),
        (Route(jpeg(5), faults=["truncate"]), "ok", 200, 2),
        (Route(jpeg(6), always="truncate"), "truncated", None, 4),
        (Route(jpeg(7), faults=["timeout"], delay=1.0), "ok", 200, 2),
        (Route(jpeg(8), always="slow", delay=4.0), "timeout", None, 4),
        (Route(b"not an image at all" * 10), "decode_error", 200, 1),
    ],
    ids=["404", "500-then-ok", "500-always", "reset-twice", "reset-always", "truncate-once",
         "truncate-always", "timeout-once", "slow-past-deadline", "not-an-image"],
)
def test_fault_statuses_attempts_and_no_partial_files(
        server: FaultServer, tmp_path: Path, route: Route, status: str,
        http_status: int | None, attempts: int) -> None:
    server.routes["x.jpg"] = route
    config = FetchConfig(timeout=0.5, deadline=0.6 if route.always == "slow" else 2.0,
                         retries=3, backoff=0.01)
    row = process_item(_item(server, "x"), tmp_path / "images", config)
    assert (row["status"], row["http_status"], row["attempts"]) == (status, http_status, attempts)
    assert server.hits["x.jpg"] == attempts
    expected_files = ["x.jpg"] if status == "ok" else []
    assert _leftovers(tmp_path / "images") == expected_files  # no temp or partial files
    if status == "ok":
        assert (tmp_path / "images" / "x.jpg").read_bytes() == route.body
        assert row["sha256"] == hashlib.sha256(route.body).hexdigest()


def test_429_honours_retry_after(server: FaultServer, tmp_path: Path) -> None:
    server.routes["x.jpg"] = Route(jpeg(9), faults=["429"], retry_after="1")
    started = time.monotonic()
    row = process_item(_item(server, "x"), tmp_path, FAST)
    assert row["status"] == "ok" and row["attempts"] == 2
    assert time.monotonic() - started >= 0.95  # waited Retry-After, not the 10 ms backoff


def test_sha_mismatch_is_not_written(server: FaultServer, tmp_path: Path) -> None:
    body = jpeg(10)
    server.routes["x.jpg"] = Route(body, always="wrong")
    item = _item(server, "x", sha256=hashlib.sha256(body).hexdigest())
    row = process_item(item, tmp_path / "images", FAST)
    assert row["status"] == "checksum_mismatch" and row["attempts"] == 1
    assert _leftovers(tmp_path / "images") == []


def test_file_url_from_remote_list_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(jpeg(11))
    outcome = fetch(f"file://{secret}", FAST, allow_local=False)
    assert outcome.status == "refused" and outcome.attempts == 0
    assert fetch("ftp://example.invalid/x.jpg", FAST, allow_local=True).status == "refused"


def test_cli_status_table_resume_and_retry_failed(server: FaultServer, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    bodies = {f"i{index}": jpeg(20 + index) for index in range(6)}
    for name, body in bodies.items():
        server.routes[f"{name}.jpg"] = Route(body)
    server.routes["i4.jpg"].always = "500"
    server.routes["i5.jpg"].always = "404"
    listing = tmp_path / "list.csv"
    listing.write_text("image_id,score\n" + "".join(f"{name},3\n" for name in bodies))
    dest = tmp_path / "dest"
    argv = ["--dataset", "folder", "--dest", str(dest), "--list", str(listing), "--source",
            server.url("{image_id}.jpg"), "--workers", "3", "--retries", "2", "--backoff", "0.01",
            "--timeout", "1"]
    assert run(argv) == 0
    table = pq.read_table(dest / "downloads.parquet")
    assert table.schema == DOWNLOADS_SCHEMA
    rows = {row["image_id"]: row for row in table.to_pylist()}
    assert {k: v["status"] for k, v in rows.items()} == {
        "i0": "ok", "i1": "ok", "i2": "ok", "i3": "ok", "i4": "http_error", "i5": "not_found"}
    assert (rows["i4"]["attempts"], rows["i5"]["attempts"]) == (3, 1)
    manifest = pq.read_table(dest / "manifest.parquet")
    assert manifest.column("image_id").to_pylist() == ["i0", "i1", "i2", "i3"]
    assert "http_error" in capsys.readouterr().out

    (dest / "images" / "i1.jpg").unlink()  # resume: only the missing file is fetched again
    hits_before = dict(server.hits)
    assert run(argv) == 0
    fetched = {name for name in server.hits if server.hits[name] != hits_before.get(name, 0)}
    assert fetched == {"i1.jpg"}
    rows = {row["image_id"]: row for row in pq.read_table(dest / "downloads.parquet").to_pylist()}
    assert rows["i0"]["status"] == "present" and rows["i1"]["status"] == "ok"

    server.routes["i4.jpg"].always = None  # the server recovered; retry only the failures
    hits_before = dict(server.hits)
    assert run([*argv, "--retry-failed"]) == 0
    fetched = {name for name in server.hits if server.hits[name] != hits_before.get(name, 0)}
    assert fetched == {"i4.jpg", "i5.jpg"}
    rows = {row["image_id"]: row for row in pq.read_table(dest / "downloads.parquet").to_pylist()}
    assert rows["i4"]["status"] == "ok" and rows["i5"]["status"] == "not_found"
    assert (dest / "images" / "i4.jpg").read_bytes() == bodies["i4"]
    assert pq.read_table(dest / "manifest.parquet").num_rows == 5


def test_bad_argument_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run(["--dataset", "ava", "--dest", "d", "--source", "s", "--workers", "0"])
    assert exit_info.value.code == 2
    assert "--workers" in capsys.readouterr().err


def test_failure_limits_exit_3_and_the_summary_counts(server: FaultServer, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    bodies = {f"f{index}": jpeg(40 + index) for index in range(6)}
    for name, body in bodies.items():
        server.routes[f"{name}.jpg"] = Route(body)
    server.routes["f4.jpg"].always = "404"
    server.routes["f5.jpg"].always = "404"
    listing = tmp_path / "list.csv"
    listing.write_text("image_id,score\n" + "".join(f"{name},3\n" for name in bodies))
    argv = ["--dataset", "folder", "--dest", str(tmp_path / "dest"), "--list", str(listing),
            "--source", server.url("{image_id}.jpg"), "--retries", "0", "--timeout", "1"]
    assert run(argv) == 0  # no limit given: failures are data, not an exit code
    assert "6 item(s): 4 ok, 2 failed" in capsys.readouterr().out
    assert run([*argv, "--fail-on-errors"]) == 3  # the failures on record count
    assert "2 of 6 item(s) failed (--fail-on-errors)" in capsys.readouterr().out
    assert run([*argv, "--max-failed-fraction", "0.34"]) == 0  # 2/6 = 0.333 <= 0.34
    assert run([*argv, "--max-failed-fraction", "0.33"]) == 3
    assert "above --max-failed-fraction 0.33" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["1.5", "-0.1", "half"])
def test_bad_failed_fraction_exits_2(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run(["--dataset", "ava", "--dest", "d", "--source", "s", "--max-failed-fraction", value])
    assert exit_info.value.code == 2
    assert "--max-failed-fraction" in capsys.readouterr().err
