"""HTTP server on 127.0.0.1 serving bytes per path, with injectable faults (benchmarks and tests)."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

HOST = "127.0.0.1"
MAX_SLEEP = 5.0  # no handler ever sleeps longer, so shutdown stays bounded


@dataclass
class Route:
    """What one path serves: the body, then faults consumed one per request (None = normal).

    Fault kinds: '404', '500', '429' (Retry-After: retry_after), 'timeout' (sleep before the
    headers), 'reset' (TCP RST), 'truncate' (half the declared body), 'wrong' (other bytes),
    'slow' (the body in small chunks with pauses). `always` repeats the fault forever.
    """

    body: bytes
    faults: list[str] = field(default_factory=list)
    always: str | None = None
    retry_after: str = "1"
    delay: float = 1.0


class FaultServer:
    """Context manager: start on a free port of 127.0.0.1, stop on exit (bounded)."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((HOST, 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:PORT"""
        return f"http://{HOST}:{self._server.server_address[1]}"

    def url(self, path: str) -> str:
        """Full URL of a path."""
        return f"{self.base_url}/{path.lstrip('/')}"

    def __enter__(self) -> FaultServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=MAX_SLEEP + 1)

    def next_fault(self, path: str) -> tuple[Route | None, str | None]:
        """Count a hit and pop the fault for this request."""
        with self._lock:
            self.hits[path] += 1
            route = self.routes.get(path)
            if route is None:
                return None, "404"
            if route.faults:
                return route, route.faults.pop(0)
            return route, route.always

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def do_GET(self) -> None:
                route, fault = server.next_fault(self.path.lstrip("/"))
                FAULTS.get(fault or "", _serve)(self, route)

        return Handler


def _headers(
    handler: BaseHTTPRequestHandler, code: int, length: int, extra: dict[str, str] | None = None
) -> None:
    handler.send_response(code)
    handler.send_header("Content-Type", "image/jpeg" if code == 200 else "text/plain")
    handler.send_header("Content-Length", str(length))
    for name, value in (extra or {}).items():
        handler.send_header(name, value)
    handler.end_headers()


def _serve(handler: BaseHTTPRequestHandler, route: Route | None) -> None:
    assert route is not None
    _headers(handler, 200, len(route.body))
    handler.wfile.write(route.body)


def _error(code: int) -> Callable[[BaseHTTPRequestHandler, Route | None], None]:
    def send(handler: BaseHTTPRequestHandler, route: Route | None) -> None:
        body = f"error {code}".encode()
        extra = {"Retry-After": route.retry_after} if code == 429 and route else None
        _headers(handler, code, len(body), extra)
        handler.wfile.write(body)

    return send


def _timeout(handler: BaseHTTPRequestHandler, route: Route | None) -> None:
    assert route is not None
    time.sleep(min(route.delay, MAX_SLEEP))
    handler.close_connection = True


def _reset(handler: BaseHTTPRequestHandler, route: Route | None) -> None:
    handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    handler.close_connection = True
    handler.connection.close()


def _truncate(handler: BaseHTTPRequestHandler, route: Route | None) -> None:
    assert route is not None
    _headers(handler, 200, len(route.body))
    handler.wfile.write(route.body[: len(route.body) // 2])
    handler.wfile.flush()
    handler.close_connection = True


def _wrong(handler: BaseHTTPRequestHandler, route: Route | None) -> None:
    assert route is not None
    body = bytes(reversed(route.body))
    _headers(handler, 200, len(body))
    handler.wfile.write(body)


def _slow(handler: BaseHTTPRequestHandler, route: Route | None) -> None:
    assert route is not None
    _headers(handler, 200, len(route.body))
    chunks = [route.body[i : i + 256] for i in range(0, len(route.body), 256)]
    pause = min(route.delay / max(len(chunks), 1), 0.2)
    try:
        for chunk in chunks:
            handler.wfile.write(chunk)
            handler.wfile.flush()
            time.sleep(pause)
    except (BrokenPipeError, ConnectionResetError):
        handler.close_connection = True


FAULTS = {
    "404": _error(404),
    "500": _error(500),
    "429": _error(429),
    "timeout": _timeout,
    "reset": _reset,
    "truncate": _truncate,
    "wrong": _wrong,
    "slow": _slow,
}
