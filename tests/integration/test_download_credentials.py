"""Downloads from a server that demands credentials: userinfo, netrc, a header variable, redirects;
no password, token or signature in any output of a run, its dry run or its re-runs."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from features.download.fetch import FetchConfig, fetch
from pipelines import download

USER, PASSWORD = "alice", "pw-Q7x/@:9 secret"  # percent-encoded in URLs
TOKEN = "tok-5d1e8a9c77"
SIGNATURE = "sig-0be7f3c2aa"
FAST = ["--retries", "1", "--backoff", "0.01", "--timeout", "2"]


def jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (24, 24, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class AuthServer:
    """127.0.0.1 server of JPEGs that answers 401 unless a request carries an accepted header."""

    def __init__(self, accepted: dict[str, str]) -> None:
        self.accepted = accepted  # header name -> value
        self.bodies = {f"i{index}.jpg": jpeg(index) for index in range(4)}
        self.redirects: dict[str, str] = {}
        self.fail_once = {"i2.jpg"}  # one 500 first: a retry, and its log line
        self.seen: list[tuple[str, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True

    @property
    def netloc(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def _answer(self, path: str, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        with self._lock:
            self.seen.append((path, headers))
            if path in self.redirects:
                return 302, b"", {"Location": self.redirects[path]}
            if not any(headers.get(name) == value for name, value in self.accepted.items()):
                return 401, b"who are you", {"WWW-Authenticate": 'Basic realm="images"'}
            if path in self.fail_once:
                self.fail_once.discard(path)
                return 500, b"try again", {}
            body = self.bodies.get(path)
            return (404, b"no", {}) if body is None else (200, body, {})

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def do_GET(self) -> None:
                path = self.path.lstrip("/").split("?")[0]
                code, body, extra = server._answer(path, dict(self.headers.items()))
                self.send_response(code)
                for name, value in {**extra, "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def __enter__(self) -> AuthServer:
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(autouse=True)
def no_ambient_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The developer's own ~/.netrc or header variables never reach these tests."""
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for name in [name for name in os.environ if name.startswith("MLSP_DOWNLOAD_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def server() -> Iterator[AuthServer]:
    with AuthServer({"Authorization": basic(USER, PASSWORD)}) as running:
        yield running


def argv(tmp_path: Path, source: str, *extra: str) -> list[str]:
    listing = tmp_path / "list.csv"
    listing.write_text("image_id,score\n" + "".join(f"i{index},3\n" for index in range(4)))
    return ["--dataset", "folder", "--dest", str(tmp_path / "dest"), "--list", str(listing),
            "--source", source, *FAST, *extra]


def template(server: AuthServer, userinfo: str = "", query: str = "") -> str:
    return f"http://{userinfo}{server.netloc}/{{image_id}}.jpg{query}"


def rows(tmp_path: Path) -> dict[str, dict[str, object]]:
    table = pq.read_table(tmp_path / "dest" / "downloads.parquet")
    return {row["image_id"]: row for row in table.to_pylist()}


def assert_all_ok(tmp_path: Path, server: AuthServer) -> None:
    assert {name: row["status"] for name, row in rows(tmp_path).items()} == dict.fromkeys(
        ("i0", "i1", "i2", "i3"), "ok")
    for name, body in server.bodies.items():
        assert (tmp_path / "dest" / "images" / name).read_bytes() == body


def test_userinfo_in_source_authenticates_without_sending_it_in_the_host(
        server: AuthServer, tmp_path: Path) -> None:
    userinfo = f"{USER}:{quote(PASSWORD, safe='')}@"
    assert download.run(argv(tmp_path, template(server, userinfo))) == 0
    assert_all_ok(tmp_path, server)
    assert {headers["Host"] for _, headers in server.seen} == {server.netloc}
    assert rows(tmp_path)["i0"]["uri"] == f"http://{USER}:***@{server.netloc}/i0.jpg"


@pytest.mark.parametrize("variable", ["NETRC", "HOME"])
def test_netrc_authenticates(server: AuthServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             variable: str) -> None:
    home = tmp_path / "home"
    home.mkdir()
    netrc = home / (".netrc" if variable == "HOME" else "creds")
    netrc.write_text(f'machine other.example login x password y\n'
                     f'machine 127.0.0.1 login {USER} password "{PASSWORD}"\n')
    if variable == "HOME":
        monkeypatch.delenv("NETRC")
    monkeypatch.setenv(variable, str(home if variable == "HOME" else netrc))
    assert download.run(argv(tmp_path, template(server))) == 0
    assert_all_ok(tmp_path, server)


@pytest.mark.parametrize("variable", ["MLSP_DOWNLOAD_HEADER", "MLSP_DOWNLOAD_HEADER_127_0_0_1"])
def test_header_variable_authenticates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       variable: str) -> None:
    with AuthServer({"Authorization": f"Bearer {TOKEN}"}) as server:
        monkeypatch.setenv(variable, f"Authorization: Bearer {TOKEN}")
        monkeypatch.setenv("MLSP_DOWNLOAD_HEADER_OTHER_EXAMPLE", "Authorization: Bearer nope")
        assert download.run(argv(tmp_path, template(server))) == 0
        assert_all_ok(tmp_path, server)


def test_wrong_credentials_are_a_401_row_with_the_url_redacted_and_retry_failed_fixes_them(
        server: AuthServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert download.run(argv(tmp_path, template(server, "alice:wrong-pass-7@"))) == 0
    row = rows(tmp_path)["i1"]
    assert (row["status"], row["http_status"], row["attempts"]) == ("http_error", 401, 1)
    assert row["uri"] == f"http://alice:***@{server.netloc}/i1.jpg"
    assert "HTTP 401" in str(row["error"]) and "userinfo" in str(row["error"])
    assert "wrong-pass-7" not in (tmp_path / "dest" / "downloads.parquet").read_bytes().decode(
        "latin-1")
    # The re-run matches rows by image_id; its credentials come from netrc this time.
    netrc = tmp_path / "netrc"
    netrc.write_text(f'machine 127.0.0.1 login {USER} password "{PASSWORD}"\n')
    monkeypatch.setenv("NETRC", str(netrc))
    assert download.run([*argv(tmp_path, template(server)), "--retry-failed"]) == 0
    assert_all_ok(tmp_path, server)


def test_no_credentials_name_the_ways_to_give_them(server: AuthServer, tmp_path: Path) -> None:
    assert download.run(argv(tmp_path, template(server))) == 0
    error = str(rows(tmp_path)["i0"]["error"])
    assert "HTTP 401" in error and "netrc" in error and "MLSP_DOWNLOAD_HEADER" in error


def test_credentials_follow_a_redirect_on_the_same_host_only(server: AuthServer) -> None:
    with AuthServer({}) as storage:  # a second origin, e.g. a signed-URL storage host
        storage.accepted = {"X-Never": "sent"}
        server.redirects["same.jpg"] = f"http://{server.netloc}/i0.jpg"
        server.redirects["away.jpg"] = f"http://{storage.netloc}/i1.jpg"
        config = FetchConfig(retries=0, timeout=2)
        userinfo = f"{USER}:{quote(PASSWORD, safe='')}@{server.netloc}"
        same = fetch(f"http://{userinfo}/same.jpg", config, allow_local=False)
        assert same.status == "ok" and same.data == server.bodies["i0.jpg"]
        away = fetch(f"http://{userinfo}/away.jpg", config, allow_local=False)
        assert (away.status, away.http_status) == ("http_error", 401)
        assert [headers.get("Authorization") for _, headers in storage.seen] == [None]


def test_malformed_header_variable_exits_2_without_echoing_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MLSP_DOWNLOAD_HEADER", f"Bearer {TOKEN}")
    assert download.run(argv(tmp_path, "http://127.0.0.1:9/{image_id}.jpg")) == 2
    err = capsys.readouterr().err
    assert "MLSP_DOWNLOAD_HEADER" in err and TOKEN not in err


def _everything_written(dest: Path) -> str:
    """Every file under DEST as text; Parquet files as their rows."""
    texts = []
    for path in sorted(dest.rglob("*")):
        if path.suffix == ".parquet":
            texts.append(json.dumps(pq.read_table(path).to_pylist(), default=str))
        if path.is_file():
            texts.append(path.read_bytes().decode("latin-1"))
        texts.append(str(path))
    return "\n".join(texts)


@pytest.fixture
def project_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog on the project's loggers (the CLIs' logging set-up replaces the root's handlers)."""
    loggers = [logging.getLogger(name) for name in ("features", "pipelines", "orchestration")]
    for logger in loggers:
        logger.addHandler(caplog.handler)
    yield caplog
    for logger in loggers:
        logger.removeHandler(caplog.handler)


def test_no_secret_in_any_output_of_a_run_its_dry_run_and_re_runs(
        server: AuthServer, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        project_logs: pytest.LogCaptureFixture) -> None:
    secrets = (PASSWORD, quote(PASSWORD, safe=""), SIGNATURE, TOKEN)
    signed = f"?X-Amz-Credential=AKIA&X-Amz-Signature={SIGNATURE}&token={TOKEN}&v=1"
    source = template(server, f"{USER}:{quote(PASSWORD, safe='')}@", signed)
    server.bodies.pop("i3.jpg")  # one failure on record: a 404 row and a summary line
    base = argv(tmp_path, source, "-v")
    assert download.run([*base, "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert "4 to fetch" in dry and f"http://{USER}:***@{server.netloc}/i0.jpg?" in dry
    assert f"credentials for {server.netloc}: Basic auth from the URL's userinfo" in dry
    assert not (tmp_path / "dest" / "downloads.parquet").exists()
    assert download.run(base) == 0
    assert download.run([*base, "--retry-failed"]) == 0
    (tmp_path / "dest" / "images" / "i0.jpg").unlink()
    assert download.run(base) == 0  # resume: i0 again, with the credentials of this argv
    assert {name: row["status"] for name, row in rows(tmp_path).items()} == {
        "i0": "ok", "i1": "present", "i2": "present", "i3": "not_found"}
    assert rows(tmp_path)["i1"]["uri"] == (
        f"http://{USER}:***@{server.netloc}/i1.jpg?X-Amz-Credential=***"
        "&X-Amz-Signature=***&token=***&v=1")
    captured = capsys.readouterr()
    logs = "\n".join(record.getMessage() for record in project_logs.records)
    assert "attempt 1 failed (HTTP 500" in logs and f"{USER}:***@" in logs  # logged, redacted
    outputs = {"stdout": captured.out, "stderr": captured.err, "logs": logs,
               "files": _everything_written(tmp_path / "dest")}
    assert "not_found" in captured.out and "i0.jpg" in outputs["files"]
    for where, text in outputs.items():
        for secret in secrets:
            assert secret not in text, f"{secret!r} in {where}"


def test_beam_runner_status_rows_are_redacted(server: AuthServer, tmp_path: Path) -> None:
    userinfo = f"{USER}:{quote(PASSWORD, safe='')}@"
    assert download.run([*argv(tmp_path, template(server, userinfo)), "--runner", "direct",
                         "--shard-size", "2"]) == 0
    assert_all_ok(tmp_path, server)
    assert quote(PASSWORD, safe="") not in _everything_written(tmp_path / "dest")
    assert PASSWORD not in _everything_written(tmp_path / "dest")
