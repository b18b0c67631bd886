"""The fault-injecting proxy: pass-through, 503/429, resets before/after forwarding, lost answers."""

from __future__ import annotations

import dataclasses
import http.client
import http.server
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from benchmarks.fault_proxy import FaultMix, FaultProxy
from benchmarks.object_store_servers import RequestLog


@dataclass
class Upstream:
    """A tiny key-value HTTP server: PUT stores the body under the path, GET/HEAD return it."""

    port: int
    objects: dict[str, bytes] = field(default_factory=dict)
    applied: list[tuple[str, str]] = field(default_factory=list)  # (method, path) handled


def _upstream_handler(state: Upstream) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args: Any) -> None:
            del args

        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            state.objects[self.path] = body
            state.applied.append(("PUT", self.path))
            self._reply(200, b"stored")

        def do_GET(self) -> None:
            state.applied.append((self.command, self.path))
            data = state.objects.get(self.path)
            self._reply(404, b"missing") if data is None else self._reply(200, data)

        do_HEAD = do_GET  # noqa: N815

        def _reply(self, status: int, data: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

    return Handler


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    server.daemon_threads = True
    state = Upstream(server.server_address[1])
    server.RequestHandlerClass = _upstream_handler(state)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def proxy(upstream: Upstream) -> Iterator[FaultProxy]:
    with FaultProxy.start(upstream.port, log=RequestLog()) as running:
        yield running


def _connect(proxy: FaultProxy) -> http.client.HTTPConnection:
    assert proxy.endpoint_url == f"http://127.0.0.1:{proxy.port}"
    return http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)


def _call(
    connection: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None
) -> tuple[int, bytes, http.client.HTTPResponse]:
    connection.request(method, path, body=body)
    response = connection.getresponse()
    return response.status, response.read(), response


def test_no_faults_pass_through_on_one_keep_alive_connection(
    proxy: FaultProxy, upstream: Upstream
) -> None:
    connection = _connect(proxy)
    assert _call(connection, "PUT", "/a?x=1", b"hello")[:2] == (200, b"stored")
    assert _call(connection, "GET", "/a?x=1")[:2] == (200, b"hello")
    status, data, response = _call(connection, "HEAD", "/a?x=1")
    assert (status, data, response.getheader("Content-Length")) == (200, b"", "5")
    connection.putrequest("PUT", "/chunked")  # a chunked request body is relayed whole
    connection.putheader("Transfer-Encoding", "chunked")
    connection.endheaders()
    connection.send(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert connection.getresponse().read() == b"stored"
    assert upstream.objects == {"/a?x=1": b"hello", "/chunked": b"abcde"}
    assert proxy.log is not None and proxy.log.entries[0] == ("PUT", "/a", "x=1")
    assert len(proxy.log.entries) == 4 and not proxy.faults
    connection.close()


def test_unavailable_and_throttled_answer_without_forwarding(
    proxy: FaultProxy, upstream: Upstream
) -> None:
    proxy.set_mix(FaultMix(unavailable=1.0))
    connection = _connect(proxy)
    status, data, response = _call(connection, "PUT", "/bucket/key", b"x")
    assert status == 503 and b"<Code>SlowDown</Code>" in data
    assert response.getheader("Content-Type") == "application/xml"
    status, data, response = _call(connection, "GET", "/storage/v1/b/bucket/o")
    assert status == 503 and response.getheader("Content-Type") == "application/json"
    assert data == b'{"error": {"code": 503, "message": "Service Unavailable"}}'
    proxy.set_mix(FaultMix(throttled=1.0))
    status, data, _ = _call(connection, "GET", "/bucket/key")
    assert status == 429 and b"<Code>TooManyRequests</Code>" in data
    assert _call(connection, "GET", "/upload/storage/v1/b")[0] == 429
    assert upstream.applied == [] and proxy.faults == {"503": 2, "429": 2}
    assert proxy.log is not None and len(proxy.log.entries) == 4


def test_exempt_requests_are_forwarded(upstream: Upstream) -> None:
    mix = FaultMix(unavailable=1.0)
    with FaultProxy.start(upstream.port, mix, exempt=lambda m, p, q: m == "PUT") as proxy:
        connection = _connect(proxy)
        assert _call(connection, "PUT", "/k", b"v")[0] == 200
        assert _call(connection, "GET", "/k")[0] == 503
    assert upstream.objects == {"/k": b"v"}


def test_reset_before_sends_rst_and_upstream_sees_nothing(
    proxy: FaultProxy, upstream: Upstream
) -> None:
    proxy.set_mix(FaultMix(reset_before=1.0))
    with pytest.raises(ConnectionResetError):  # http.client.RemoteDisconnected is one too
        _call(_connect(proxy), "PUT", "/k", b"v" * 100_000)
    with socket.create_connection(("127.0.0.1", proxy.port)) as raw:
        raw.sendall(b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(ConnectionResetError):  # an RST, not an orderly close (b"")
            raw.recv(1024)
    assert upstream.applied == [] and proxy.faults == {"reset_before": 2}


def test_reset_after_applies_then_resets(proxy: FaultProxy, upstream: Upstream) -> None:
    proxy.set_mix(FaultMix(reset_after=1.0))
    with pytest.raises(ConnectionResetError):
        _call(_connect(proxy), "PUT", "/k", b"v")
    assert upstream.objects == {"/k": b"v"} and proxy.faults == {"reset_after": 1}


def test_drop_answer_once_loses_one_answer_per_registration(
    proxy: FaultProxy, upstream: Upstream
) -> None:
    proxy.drop_answer_once(lambda method, path, query, headers, body: method == "PUT")
    proxy.drop_answer_once(lambda method, path, query, headers, body: headers.get("x-tag") == "b")
    connection = _connect(proxy)
    assert _call(connection, "GET", "/k")[0] == 404  # no match: answered
    with pytest.raises(ConnectionResetError):
        _call(connection, "PUT", "/k?n=1", b"first")
    connection = _connect(proxy)
    assert _call(connection, "PUT", "/k2", b"second")[0] == 200  # first registration used up
    connection.request("GET", "/k?n=1", headers={"X-Tag": "b"})
    with pytest.raises(ConnectionResetError):
        connection.getresponse()
    assert _call(_connect(proxy), "GET", "/k?n=1", None)[:2] == (200, b"first")
    assert proxy.dropped == [("PUT", "/k", "n=1"), ("GET", "/k", "n=1")]
    assert proxy.faults == {"dropped": 2}
    assert upstream.objects == {"/k?n=1": b"first", "/k2": b"second"}


def _outcomes(proxy: FaultProxy, upstream: Upstream, count: int) -> list[str]:
    """Make count PUTs one at a time; what each met: 200, 503, 429, reset_before/after."""
    outcomes, connection = [], _connect(proxy)
    for index in range(count):
        path = f"/run/{index}"
        upstream.objects.pop(path, None)
        try:
            outcomes.append(str(_call(connection, "PUT", path, b"x")[0]))
        except ConnectionError:
            outcomes.append("reset_after" if path in upstream.objects else "reset_before")
            connection = _connect(proxy)
    connection.close()
    return outcomes


def test_seeded_mix_is_deterministic_with_expected_frequencies(
    proxy: FaultProxy, upstream: Upstream
) -> None:
    mix = FaultMix(unavailable=0.1, throttled=0.1, reset_before=0.1, reset_after=0.1, seed=42)
    proxy.set_mix(mix)
    first = _outcomes(proxy, upstream, 400)
    proxy.set_mix(mix)
    again = _outcomes(proxy, upstream, 400)
    proxy.set_mix(dataclasses.replace(mix, seed=7))
    other = _outcomes(proxy, upstream, 100)
    assert again == first and other != first[:100]
    for kind in ("503", "429", "reset_before", "reset_after"):
        assert 20 <= first.count(kind) <= 65, (kind, first.count(kind))
    seen = Counter(first + again + other)
    del seen["200"]
    assert proxy.faults == seen


def test_mix_rejects_probabilities_over_one() -> None:
    with pytest.raises(ValueError, match="sum to <= 1"):
        FaultMix(unavailable=0.6, reset_after=0.5)
