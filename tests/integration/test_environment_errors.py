"""One line and exit 1, before any model is built, for a run whose paths, credentials or endpoint fail."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import fsspec
import pytest

from features.extraction import planning
from features.store import compaction, convert, query, verify
from jobs import evaluate, predict, recalibrate, train
from pipelines import download, extract, labels
from pipelines import manifest as manifest_cli
from tests.helpers.cli_errors import one_error_line as _one_error_line
from tests.helpers.cli_errors import tree
from tests.helpers.tiny_extract import VIEW, tiny_manifest

ACCESS_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_manifest(tmp_path_factory.mktemp("env") / "sample", count=2)


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the run gets as far as resolving (and building) a model."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the run built a model before checking its environment")

    monkeypatch.setattr(planning, "resolve_specs", refuse)
    monkeypatch.setattr(extract, "resolve_specs", refuse)


@pytest.fixture(scope="module")
def denying_s3() -> Iterator[str]:
    """An S3 endpoint on 127.0.0.1 that answers every request 403 AccessDenied (one per module:
    shutting a server down waits out its 0.5 s poll)."""

    class Deny(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            del args

        def _deny(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(403)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(ACCESS_DENIED)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(ACCESS_DENIED)

        do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _deny  # noqa: N815

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Deny)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _extract(manifest: Path | str, store: str) -> list[str]:
    return [
        *("--manifest", str(manifest), "--store", store, "--view", VIEW),
        *("--weights", "random:0", "--direct_num_workers", "1"),
    ]


def _s3_options(monkeypatch: pytest.MonkeyPatch, endpoint: str, **credentials: str) -> None:
    monkeypatch.setitem(
        fsspec.config.conf, "s3", {**credentials, "client_kwargs": {"endpoint_url": endpoint}}
    )


def test_missing_manifest(no_model, tmp_path, capsys) -> None:
    assert extract.run(_extract("/nope.parquet", str(tmp_path / "store"))) == 1
    assert _one_error_line(capsys) == "error: --manifest /nope.parquet: no such file"


def test_store_naming_an_existing_file(no_model, manifest, tmp_path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    assert extract.run(_extract(manifest, str(tmp_path / "file" / "store"))) == 1
    assert "is a file, not a folder" in _one_error_line(capsys)
    assert extract.run(_extract(manifest, str(tmp_path / "file"))) == 1
    assert "is a file, not a folder" in _one_error_line(capsys)


def test_store_that_cannot_be_created(no_model, manifest, capsys) -> None:
    assert extract.run(_extract(manifest, "/proc/mlsp-store")) == 1
    line = _one_error_line(capsys)
    assert line.startswith("error: --store /proc/mlsp-store: cannot create the folder"), line


def _without_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    _s3_options(monkeypatch, "http://127.0.0.1:9")


def test_s3_without_credentials(no_model, manifest, monkeypatch, capsys) -> None:
    _without_aws_credentials(monkeypatch)
    assert extract.run(_extract(manifest, "s3://no-creds/store")) == 1
    line = _one_error_line(capsys)
    assert "--store s3://no-creds/store: no AWS credentials found" in line, line


def test_unreachable_endpoint(no_model, manifest, monkeypatch, capsys) -> None:
    _s3_options(monkeypatch, "http://127.0.0.1:9", key="k", secret="s")  # nothing listens
    assert extract.run(_extract(manifest, "s3://b/store")) == 1
    line = _one_error_line(capsys)
    assert "--store s3://b/store: the store does not answer" in line and "refused" in line, line


def test_permission_denied(no_model, manifest, monkeypatch, denying_s3, capsys) -> None:
    _s3_options(monkeypatch, denying_s3, key="k", secret="s")
    assert extract.run(_extract(manifest, "s3://b/store")) == 1
    line = _one_error_line(capsys)
    assert "--store s3://b/store: permission denied" in line, line


def test_download_destination_under_a_file(tmp_path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    argv = [
        "--dataset",
        "folder",
        "--source",
        str(tmp_path),
        "--dest",
        str(tmp_path / "file" / "d"),
    ]
    assert download.run(argv) == 1
    assert "--dest" in _one_error_line(capsys)


def test_training_output_that_cannot_be_created(manifest, tmp_path, capsys) -> None:
    argv = [
        *("--store", str(tmp_path), "--view", VIEW),  # the store is checked first: it exists
        *("--labels", str(manifest), "--out", "/proc/mlsp-run"),
    ]
    assert train.run(argv) == 1
    assert "--out /proc/mlsp-run: cannot create the folder" in _one_error_line(capsys)


# Every other CLI, one S3 flag each ({url}: s3://b/x; {tmp}: a local folder), and that flag.
REMOTE: dict[str, tuple[Callable[[Sequence[str] | None], int], list[str], str]] = {
    "labels-raw": (labels.run, ["--dataset", "ava", "--raw", "{url}", "--out", "{tmp}/l"], "--raw"),
    "labels-out": (labels.run, ["--dataset", "ava", "--raw", "{tmp}", "--out", "{url}"], "--out"),
    "manifest-out": (manifest_cli.run, ["--images", "{tmp}", "--out", "{url}"], "--out"),
    "recalibrate-labels": (recalibrate.run, ["--labels", "{url}", "--apply", "{tmp}"], "--labels"),
    "evaluate-run": (evaluate.run, ["--run", "{url}"], "--run"),
    "train-store": (
        train.run,
        ["--store", "{url}", "--view", "v", "--labels", "{tmp}/l.parquet", "--out", "{tmp}/o"],
        "--store",
    ),
    "train-labels": (
        train.run,
        ["--store", "{tmp}", "--view", "v", "--labels", "{url}", "--out", "{tmp}/o"],
        "--labels",
    ),
    "predict-images": (
        predict.run,
        ["--run", "{tmp}", "--images", "{url}", "--out", "{tmp}/p"],
        "--images",
    ),
    "query-store": (query.run, ["--store", "{url}"], "--store"),
    "verify-store": (verify.run, ["--store", "{url}"], "--store"),
    "compact-store": (compaction.run, ["--store", "{url}"], "--store"),
    "convert-store": (
        convert.run,
        ["--store", "{url}", "--view", "v", "--out", "{tmp}/c", "--to", "zarr"],
        "--store",
    ),
}


def _remote(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run a REMOTE case; returns its one error line, once shown to name the flag and the URL
    and to have written nothing."""
    run, argv, flag = REMOTE[case]
    url = "s3://b/x"
    assert run([part.format(url=url, tmp=tmp_path) for part in argv]) == 1
    line = _one_error_line(capsys)
    assert line.startswith(f"error: {flag} {url}: "), line
    assert tree(tmp_path) == set()
    return line


@pytest.mark.parametrize("case", sorted(REMOTE))
def test_every_cli_without_credentials(case, tmp_path, monkeypatch, capsys) -> None:
    _without_aws_credentials(monkeypatch)
    assert "no AWS credentials found" in _remote(case, tmp_path, capsys)


@pytest.mark.parametrize("case", sorted(REMOTE))
def test_every_cli_with_an_unreachable_endpoint(case, tmp_path, monkeypatch, capsys) -> None:
    _s3_options(monkeypatch, "http://127.0.0.1:9", key="k", secret="s")
    line = _remote(case, tmp_path, capsys)
    assert "the store does not answer" in line and "refused" in line, line


@pytest.mark.parametrize("case", sorted(REMOTE))
def test_every_cli_denied(case, tmp_path, monkeypatch, denying_s3, capsys) -> None:
    _s3_options(monkeypatch, denying_s3, key="k", secret="s")
    assert "permission denied" in _remote(case, tmp_path, capsys)
