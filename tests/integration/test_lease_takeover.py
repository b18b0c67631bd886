"""kill -9 a real extraction after its first commit; re-run at once: it takes over, ends bit-exact."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features import verify
from features.store.view import FeatureView
from pipelines import extract
from tests.helpers.tiny_extract import (
    SHARD_ROWS,
    VIEW,
    extract_argv,
    store_fingerprint,
    tiny_manifest,
)

PATIENCE_SECONDS = 900.0  # a hang guard only: the run builds a model on a busy machine first


class GatedImageServer:
    """Serves image files over HTTP on 127.0.0.1; a GET of a gated image waits for the test.

    The GET of a shard's gated image tells the test which shard the extraction is working on,
    and its bytes flow only when the test opens the gate.
    """

    def __init__(self, images: dict[str, bytes]) -> None:
        self.images = images
        self.gates = {name: threading.Event() for name in images}
        self.requested: queue.Queue[str] = queue.Queue()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.open_all()

    def url(self, name: str) -> str:
        """URL of an image by file name."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/{name}"

    def open_all(self) -> None:
        """Serve every image at once."""
        for gate in self.gates.values():
            gate.set()

    def close(self, names: list[str]) -> None:
        """Hold GETs of these images until opened."""
        for name in names:
            self.gates[name].clear()

    def next_requested(self, process: subprocess.Popen[bytes]) -> str:
        """The gated image the process asked for next (fails if the process ends first)."""
        deadline = time.monotonic() + PATIENCE_SECONDS
        while time.monotonic() < deadline:
            assert process.poll() is None, "the extraction ended before it was killed"
            try:
                return self.requested.get(timeout=0.05)
            except queue.Empty:
                continue
        raise AssertionError("the extraction never asked for the next gated image")

    def shutdown(self) -> None:
        """Stop serving (held requests are released first)."""
        self.open_all()
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                del format, args  # quiet

            def _body(self) -> bytes:
                body = server.images[self.path.lstrip("/")]
                ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                if ranged is None:
                    return body
                start, stop = int(ranged[1]), int(ranged[2] or len(body) - 1) + 1
                return body[start:stop]

            def do_HEAD(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(server.images[self.path.lstrip("/")])))
                self.end_headers()

            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                if not server.gates[name].is_set():
                    server.requested.put(name)
                    server.gates[name].wait()
                body = self._body()
                with contextlib.suppress(OSError):  # the reader may have been killed
                    self.send_response(206 if "Range" in self.headers else 200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

        return Handler


def _wait_for_marker(view: FeatureView, shard: int, process: subprocess.Popen[bytes]) -> None:
    marker = Path(view.marker_path(view.shards()[shard]))
    deadline = time.monotonic() + PATIENCE_SECONDS
    while not marker.exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The tiny job served over HTTP, and the fingerprint of its clean run (warms the model)."""
    root = tmp_path_factory.mktemp("takeover")
    local = pq.read_table(tiny_manifest(root / "sample")).sort_by("image_id")
    paths = [Path(uri) for uri in local.column("uri").to_pylist()]
    server = GatedImageServer({path.name: path.read_bytes() for path in paths})
    try:
        uris = pa.array([server.url(path.name) for path in paths])
        manifest = root / "http-manifest.parquet"
        pq.write_table(local.set_column(local.schema.get_field_index("uri"), "uri", uris), manifest)
        assert extract.run(extract_argv(manifest, root / "clean")) == 0
        first_of_shard = [path.name for path in paths[::SHARD_ROWS]]  # rows follow image_id
        yield {
            "root": root,
            "manifest": manifest,
            "server": server,
            "gated": first_of_shard,
            "fingerprint": store_fingerprint(root / "clean"),
        }
    finally:
        server.shutdown()


def test_kill_9_then_immediate_rerun_takes_over_and_ends_bit_exact(job, capsys) -> None:
    server: GatedImageServer = job["server"]
    store = Path(job["root"]) / "crashed"
    argv = extract_argv(Path(job["manifest"]), store)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    server.close(job["gated"])
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.extract", *argv], env=env, stderr=subprocess.DEVNULL
    )
    view = FeatureView(str(store), VIEW)
    try:
        first = server.next_requested(process)
        server.gates[first].set()
        _wait_for_marker(view, job["gated"].index(first), process)
        server.next_requested(process)  # the run is inside its next shard, waiting for an image
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
        server.open_all()
    lease = json.loads((store / VIEW / "lease.json").read_bytes())
    assert lease["pid"] == process.pid  # the dead run's lease is still there
    committed_before = view.committed()
    assert list(committed_before) == [job["gated"].index(first)]

    capsys.readouterr()
    assert extract.run(argv) == 0  # at once: no waiting for the lease to expire
    logged = capsys.readouterr().err  # the CLI configures its own log handler on stderr
    assert f"took over the lease of view {store / VIEW} from run {lease['owner']}" in logged
    assert f"its process {process.pid} is gone" in logged
    (history,) = view.run_history()  # the killed run never wrote a summary
    (takeover,) = history["lease_takeovers"]
    assert takeover["from_run"] == lease["owner"] and takeover["from_pid"] == process.pid
    assert view.committed().items() >= committed_before.items()  # committed shard untouched
    assert store_fingerprint(store) == job["fingerprint"]


def _files_and_times(store: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of the store (but the never-deleted CAS lock file): bytes and mtime."""
    return {
        path.relative_to(store).as_posix(): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(store.rglob("*"))
        if path.is_file() and path.name != ".cas.lock"
    }


def _wait_until_expired(lease_file: Path) -> None:
    expires_at = datetime.datetime.fromisoformat(json.loads(lease_file.read_bytes())["expires_at"])
    remaining = (expires_at - datetime.datetime.now(datetime.UTC)).total_seconds()
    time.sleep(max(0.0, remaining) + 0.5)


@pytest.mark.parametrize("takeover", ["break-lease", "expiry"])
def test_a_paused_writer_that_lost_its_lease_changes_nothing(job, takeover) -> None:
    """SIGSTOP a writer inside its second shard; another run takes the lease over (by
    --break-lease, or once it expired) and finishes; SIGCONT: the first exits non-zero and
    leaves every file of the store as the second left it."""
    server: GatedImageServer = job["server"]
    store = Path(job["root"]) / f"zombie-{takeover}"
    ttl = ("--lease-ttl", "4")  # renewed every 1.3 s; the fencing window is 0.33 s
    argv = [*extract_argv(Path(job["manifest"]), store), *ttl]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    server.close(job["gated"])
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.extract", *argv], env=env, stderr=subprocess.PIPE
    )
    view = FeatureView(str(store), VIEW)
    try:
        first = server.next_requested(process)
        server.gates[first].set()
        _wait_for_marker(view, job["gated"].index(first), process)
        server.next_requested(process)  # inside its next shard, waiting for an image
        os.kill(process.pid, signal.SIGSTOP)
        lease_file = store / VIEW / "lease.json"
        owner = json.loads(lease_file.read_bytes())["owner"]
        if takeover == "expiry":
            _wait_until_expired(lease_file)
        server.open_all()
        extra = ("--break-lease", owner) if takeover == "break-lease" else ()
        assert extract.run([*argv, *extra]) == 0
        finished = _files_and_times(store)
    finally:
        os.kill(process.pid, signal.SIGCONT)
        server.open_all()
    try:
        _, stderr = process.communicate(timeout=PATIENCE_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
    errors = [line for line in stderr.decode().splitlines() if line.startswith("error:")]
    assert process.returncode == 1, stderr.decode()[-2000:]
    assert len(errors) == 1 and "writer lease" in errors[0], errors
    assert _files_and_times(store) == finished  # not one byte or mtime changed
    assert verify.run(["--store", str(store)]) == 0
    assert store_fingerprint(store) == {
        **job["fingerprint"],
        "runs outcomes": store_fingerprint(store)["runs outcomes"],
    }
