"""Fault-injecting HTTP/1.1 reverse proxy on 127.0.0.1 for tests: 503s, 429s, resets, lost answers."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import random
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import Message
from typing import Any, cast

import fsspec

from benchmarks.object_store_servers import (
    _HOP_HEADERS,
    RequestLog,
    Server,
    _read_body,
    _ThreadingHTTPServer,
    fsspec_options,
)

# predicate(method, path, query, headers with lower-case names, body) for drop_answer_once.
Predicate = Callable[[str, str, str, dict[str, str], bytes], bool]
# exempt(method, path, query): True keeps the request out of the random mix.
Exempt = Callable[[str, str, str], bool]
Answer = tuple[int, str, list[tuple[str, str]], bytes]  # status, reason, headers, body

_GCS_PREFIXES = ("/storage/", "/upload/", "/download/")
_S3_CODES = {503: "SlowDown", 429: "TooManyRequests"}
_REASONS = {503: "Service Unavailable", 429: "Too Many Requests"}


@dataclass(frozen=True)
class FaultMix:
    """Probabilities per request (sum <= 1): 503 (S3 'SlowDown' XML body / GCS JSON error body),
    429, reset before forwarding (connection closed, upstream never sees it), reset after
    forwarding (upstream applied it, client gets a closed connection, no response)."""

    unavailable: float = 0.0  # 503
    throttled: float = 0.0  # 429
    reset_before: float = 0.0
    reset_after: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        weights = (self.unavailable, self.throttled, self.reset_before, self.reset_after)
        if min(weights) < 0 or sum(weights) > 1 + 1e-9:
            raise ValueError(f"fault probabilities must be >= 0 and sum to <= 1: {self}")

    def pick(self, draw: float) -> str | None:
        """The fault kind for a uniform draw in [0, 1), or None: forward normally."""
        for kind, probability in (
            ("503", self.unavailable),
            ("429", self.throttled),
            ("reset_before", self.reset_before),
            ("reset_after", self.reset_after),
        ):
            if draw < probability:
                return kind
            draw -= probability
        return None


NO_FAULTS = FaultMix()


class FaultProxy:
    """Reverse proxy in front of http://127.0.0.1:<upstream_port> that injects faults.

    Every request is logged (faulted ones too), its body read in full, then either answered
    503/429, reset, or forwarded on a new upstream connection. Faults are drawn from one
    random.Random(mix.seed) under a lock, one draw per non-exempt request, so a sequence of
    requests made one at a time meets the same faults on every run. Queued drop_answer_once
    predicates are checked first and apply to exempt requests too.
    """

    def __init__(
        self,
        upstream_port: int,
        mix: FaultMix = NO_FAULTS,
        log: RequestLog | None = None,
        exempt: Exempt | None = None,
    ) -> None:
        self.upstream_port, self.log, self.exempt = upstream_port, log, exempt
        # Faults injected by kind: "503", "429", "reset_before", "reset_after", "dropped".
        self.faults: Counter[str] = Counter()
        self.dropped: list[tuple[str, str, str]] = []  # (method, path, query) of lost answers
        self._lock = threading.RLock()  # reentrant: a predicate may read the proxy's state
        self._drops: list[Predicate] = []
        self._mix, self._random = mix, random.Random(mix.seed)
        self._server = _FaultServer(("127.0.0.1", 0), _FaultHandler)
        self._server.proxy = self
        self.port: int = self._server.server_address[1]
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True, name="fault-proxy"
        )
        self._thread.start()

    @classmethod
    def start(
        cls,
        upstream_port: int,
        mix: FaultMix = NO_FAULTS,
        log: RequestLog | None = None,
        exempt: Exempt | None = None,
    ) -> FaultProxy:
        """A running proxy in front of 127.0.0.1:upstream_port."""
        return cls(upstream_port, mix, log, exempt)

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_mix(self, mix: FaultMix) -> None:
        """Use mix from the next request on, drawing from a fresh random.Random(mix.seed)."""
        with self._lock:
            self._mix, self._random = mix, random.Random(mix.seed)

    def drop_answer_once(self, predicate: Predicate) -> None:
        """Forward the next request matching predicate, then reset without answering it."""
        with self._lock:
            self._drops.append(predicate)

    def decide(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes = b""
    ) -> str | None:
        """The fault for one request (counted), or None to forward and answer it."""
        with self._lock:
            for index, predicate in enumerate(self._drops):
                if predicate(method, path, query, headers, body):
                    del self._drops[index]
                    self.dropped.append((method, path, query))
                    self.faults["dropped"] += 1
                    return "dropped"
            if self.exempt is not None and self.exempt(method, path, query):
                return None
            kind = self._mix.pick(self._random.random())
            if kind is not None:
                self.faults[kind] += 1
            return kind


class _FaultServer(_ThreadingHTTPServer):
    proxy: FaultProxy


class _FaultHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive to the client
    timeout = 60  # an idle keep-alive connection ends its thread
    disable_nagle_algorithm = True  # headers and body are two writes: no delayed-ACK stall

    def log_message(self, *args: Any) -> None:
        del args

    def handle_any(self) -> None:
        proxy = cast(_FaultServer, self.server).proxy
        path, _, query = self.path.partition("?")
        if proxy.log is not None:
            proxy.log.add(self.command, path, query)
        body = _read_body(self)  # in full: a reset must not leave the client blocked writing
        headers = {key.lower(): value for key, value in self.headers.items()}
        kind = proxy.decide(self.command, path, query, headers, body or b"")
        if kind in ("503", "429"):
            self._answer(_error_answer(int(kind), path))
        elif kind == "reset_before":
            self._reset()
        else:
            answer = _forward(proxy.upstream_port, self.command, self.path, self.headers, body)
            if kind is None:
                self._answer(answer)
            else:  # "reset_after" / "dropped": applied upstream, the answer is lost
                self._reset()

    # http.server dispatches on these names.
    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = handle_any  # noqa: N815

    def _answer(self, answer: Answer) -> None:
        status, reason, headers, data = answer
        self.send_response_only(status, reason)
        for key, value in headers:
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _reset(self) -> None:
        """Close with SO_LINGER (1, 0): the kernel sends RST, the client reads ECONNRESET."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # detach(): rfile/wfile still hold the socket object, so close() alone would wait for
        # them and socketserver would send a FIN (shutdown SHUT_WR) before the RST.
        os.close(self.connection.detach())


def _error_answer(status: int, path: str) -> Answer:
    """A GCS-style JSON error for GCS paths, else an S3-style XML error."""
    if path.startswith(_GCS_PREFIXES):
        error = {"error": {"code": status, "message": _REASONS[status]}}
        data, content_type = json.dumps(error).encode(), "application/json"
    else:
        data = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f"<Error><Code>{_S3_CODES[status]}</Code>"
            "<Message>Please reduce your request rate.</Message></Error>"
        ).encode()
        content_type = "application/xml"
    headers = [("Content-Type", content_type), ("Content-Length", str(len(data)))]
    return status, _REASONS[status], headers, data


def _forward(port: int, method: str, target: str, headers: Message, body: bytes | None) -> Answer:
    """Send one request to 127.0.0.1:port on a new connection; its answer, ready to relay."""
    # Expect: 100-continue was already answered to the client by http.server.
    sent = {k: v for k, v in headers.items() if k.lower() not in (*_HOP_HEADERS, "expect")}
    if body is not None:
        sent["Content-Length"] = str(len(body))
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, target, body=body, headers=sent)
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    relayed = [
        (key, value)
        for key, value in response.getheaders()
        if key.lower() not in _HOP_HEADERS and (method == "HEAD" or key.lower() != "content-length")
    ]
    if method != "HEAD":  # a HEAD answer keeps upstream's Content-Length: the object's size
        relayed.append(("Content-Length", str(len(data))))
    return response.status, response.reason, relayed, data


def proxies_for(servers: dict[str, Server]) -> dict[str, FaultProxy]:
    """A fault-free FaultProxy in front of each object-store server (by fsspec protocol); the
    servers' own request logs count what reaches them."""
    return {
        protocol: FaultProxy.start(int(server.endpoint_url.rsplit(":", 1)[1]))
        for protocol, server in servers.items()
    }


@contextlib.contextmanager
def routed_through(proxies: dict[str, FaultProxy]) -> Iterator[None]:
    """Within the block, s3:// and gs:// URLs reach the servers through the proxies: in this
    process (fsspec.config.conf) and in child processes (FSSPEC_S3 / FSSPEC_GS)."""
    saved_conf = {protocol: fsspec.config.conf.get(protocol) for protocol in proxies}
    saved_env = {f"FSSPEC_{protocol.upper()}": os.environ.get(f"FSSPEC_{protocol.upper()}")
                 for protocol in proxies}  # fmt: skip
    for protocol, proxy in proxies.items():
        options = fsspec_options(protocol, proxy.endpoint_url)
        fsspec.config.conf[protocol] = options
        os.environ[f"FSSPEC_{protocol.upper()}"] = json.dumps(options)
    try:
        yield
    finally:
        for protocol, conf in saved_conf.items():
            fsspec.config.conf.pop(protocol, None)
            if conf is not None:
                fsspec.config.conf[protocol] = conf
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
