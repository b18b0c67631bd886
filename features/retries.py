"""Retries of object-store requests, in one place: the policy, what is transient, the counters."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from schemas.errors import ConfigError, StoreUnavailableError

LOGGER = logging.getLogger(__name__)
T = TypeVar("T")
# "max_retries=3,timeout_seconds=20": the policy of this process and of the processes it starts
# (local Beam workers inherit the environment; remote ones get it in ExtractionConfig).
POLICY_ENVIRONMENT = "MLSP_STORE_RETRIES"
# HTTP statuses worth another attempt: throttling and server-side failures. 403, 404 and 412
# are answers, never retried.
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_TRANSIENT_CODES = frozenset(
    {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling",
     "ThrottlingException", "TooManyRequests", "RequestLimitExceeded"}
)  # fmt: skip
# Exception classes (by name, anywhere in the MRO) of a connection reset, refused or timed out,
# from the standard library, aiohttp, botocore and requests: no import of those libraries here.
_CONNECTION_CLASSES = {
    "ConnectionResetError": "reset", "ConnectionAbortedError": "reset", "BrokenPipeError": "reset",
    "ServerDisconnectedError": "reset", "ClientPayloadError": "reset",
    "ConnectionClosedError": "reset", "IncompleteRead": "reset", "ResponseParserError": "reset",
    "ClientOSError": "reset", "ClientConnectionError": "reset", "HTTPClientError": "reset",
    "ChunkedEncodingError": "reset", "ProxyError": "502",
    "ConnectionRefusedError": "refused", "EndpointConnectionError": "refused",
    "ClientConnectorError": "refused", "ConnectionError": "reset",
    "TimeoutError": "timeout", "ReadTimeoutError": "timeout", "ConnectTimeoutError": "timeout",
    "ServerTimeoutError": "timeout", "ReadTimeout": "timeout", "FSTimeoutError": "timeout",
}  # fmt: skip
_NEVER_RETRIED = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError)


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with full jitter, bounded in attempts and in total time.

    The defaults follow arrow-rs object_store (10 retries, 3 minutes, 100 ms doubling to 15 s).

    Attributes:
        max_retries: retries after the first attempt (0: no retries).
        timeout_seconds: no retry starts later than this after the first attempt.
        initial_backoff: upper bound of the first wait, seconds.
        max_backoff: cap of the wait bound, seconds.
        multiplier: growth of the wait bound per retry.
    """

    max_retries: int = 10
    timeout_seconds: float = 180.0
    initial_backoff: float = 0.1
    max_backoff: float = 15.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ConfigError(f"store retries: max_retries must be >= 0, got {self.max_retries}")
        for name in ("timeout_seconds", "initial_backoff", "max_backoff"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(
                    f"store retries: {name} must be a finite number >= 0, got {value}"
                )
        if not (math.isfinite(self.multiplier) and self.multiplier >= 1):
            raise ConfigError(f"store retries: multiplier must be >= 1, got {self.multiplier}")

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RetryPolicy:
        """Inverse of to_dict; unknown keys are a ConfigError naming them."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"store retries: unknown setting(s) {unknown}; known: {sorted(known)}"
            )
        return cls(
            **{key: _number(key, value, type(getattr(cls(), key))) for key, value in data.items()}
        )

    @classmethod
    def parse(cls, text: str) -> RetryPolicy:
        """'max_retries=3,timeout_seconds=20' (the MLSP_STORE_RETRIES form)."""
        pairs = [item.partition("=") for item in text.split(",") if item.strip()]
        if any(not sep for _, sep, _ in pairs):
            raise ConfigError(f"store retries {text!r}: expected key=value[,key=value...]")
        return cls.from_dict({key.strip(): value.strip() for key, _, value in pairs})

    def to_text(self) -> str:
        """The parse() form."""
        return ",".join(f"{key}={value}" for key, value in self.to_dict().items())

    def wait_bound(self, retry: int) -> float:
        """Upper bound of the wait before retry number `retry` (1-based)."""
        exponent = min(retry - 1, 64)  # 2**64 x any backoff is past every cap; no overflow
        return float(min(self.max_backoff, self.initial_backoff * self.multiplier**exponent))


def _number(key: str, value: Any, kind: type) -> Any:
    """value as kind (int or float); a ConfigError naming the key otherwise."""
    try:
        number = float(value)
        if kind is int and not number.is_integer():
            raise ValueError
        return kind(number) if math.isfinite(number) else number
    except (TypeError, ValueError):
        expected = "an integer" if kind is int else "a number"
        raise ConfigError(f"store retries: {key} must be {expected}, got {value!r}") from None


_policy_lock = threading.Lock()
_policy: RetryPolicy | None = None
_random = random.Random()


def policy() -> RetryPolicy:
    """This process's policy: configure()'s, else MLSP_STORE_RETRIES, else the defaults."""
    global _policy
    with _policy_lock:
        if _policy is None:
            text = os.environ.get(POLICY_ENVIRONMENT, "")
            _policy = RetryPolicy.parse(text) if text else RetryPolicy()
        return _policy


def configure(new_policy: RetryPolicy, export: bool = True) -> None:
    """Set this process's policy; export=True also hands it to child processes (environment)."""
    global _policy
    with _policy_lock:
        _policy = new_policy
    if export:
        os.environ[POLICY_ENVIRONMENT] = new_policy.to_text()


@contextlib.contextmanager
def temporarily(new_policy: RetryPolicy) -> Iterator[None]:
    """Use new_policy in this process within the block (preflight checks answer in seconds);
    not exported to child processes."""
    global _policy
    previous = policy()
    with _policy_lock:
        _policy = new_policy
    try:
        yield
    finally:
        with _policy_lock:
            _policy = previous


class Counters:
    """Thread-safe counts of retries ('retry <kind>') and unsettled writes ('ambiguous <op>')."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()

    def add(self, key: str) -> None:
        """Count one event."""
        with self._lock:
            self._counts[key] += 1

    def snapshot(self) -> dict[str, int]:
        """The counts so far."""
        with self._lock:
            return dict(self._counts)


COUNTERS = Counters()


def counts_since(before: Mapping[str, int]) -> dict[str, int]:
    """What COUNTERS counted since `before` (a snapshot()), without zeros."""
    now = COUNTERS.snapshot()
    return {
        key: value - before.get(key, 0) for key, value in now.items() if value > before.get(key, 0)
    }


def transient_kind(error: BaseException) -> str | None:
    """Why an error is worth another attempt ('503', 'reset', 'timeout', ...), or None.

    Looks through the error's causes: s3fs and gcsfs wrap botocore and aiohttp errors.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (*_NEVER_RETRIED, StoreUnavailableError)):
            return None
        kind = _kind_of(current)
        if kind is not None:
            return kind
        current = current.__cause__ or current.__context__
    return None


def _kind_of(error: BaseException) -> str | None:
    response = getattr(error, "response", None)
    if isinstance(response, Mapping):  # botocore ClientError
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = response.get("Error", {}).get("Code")
        if status in TRANSIENT_STATUSES or code in _TRANSIENT_CODES:
            return str(status or code)
        return None
    code = getattr(error, "code", None) or getattr(error, "status", None)
    if isinstance(code, int) and code in TRANSIENT_STATUSES:  # gcsfs HttpError, aiohttp
        return str(code)
    for cls in type(error).__mro__:
        if cls.__name__ in _CONNECTION_CLASSES:
            return _CONNECTION_CLASSES[cls.__name__]
    return None


class _Attempts:
    """One operation's retry bookkeeping (shared by the sync and async loops)."""

    def __init__(self, operation: str, target: str) -> None:
        self.operation, self.target = operation, target
        self.policy = policy()
        self.started = time.monotonic()
        self.attempts = 0

    def next_wait(self, error: BaseException) -> float:
        """Seconds to wait before the next attempt; raises when the error is final or the
        policy is spent (StoreUnavailableError naming operation, object, attempts, last error)."""
        self.attempts += 1
        kind = transient_kind(error)
        if kind is None:
            raise error
        wait = _random.uniform(0, self.policy.wait_bound(self.attempts))
        elapsed = time.monotonic() - self.started
        if self.attempts > self.policy.max_retries or elapsed + wait > self.policy.timeout_seconds:
            COUNTERS.add("gave up")
            raise StoreUnavailableError(
                f"{self.operation} {self.target} failed after {self.attempts} attempt(s) in "
                f"{elapsed:.1f} s; last error: {kind} ({_one_line(error)}). Nothing was "
                f"committed by the failed step; re-run the same command to resume"
            ) from error
        COUNTERS.add(f"retry {kind}")
        LOGGER.debug("%s %s: %s, retry %d in %.2f s", self.operation, self.target, kind,
                     self.attempts, wait)  # fmt: skip
        return wait


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def call(operation: str, target: str, attempt: Callable[[], T]) -> T:
    """Run attempt() until it succeeds, retrying transient errors under the policy.

    Args:
        operation: what it does, for the error line ('GET', 'S3 put_object', ...).
        target: the object or URL it touches.
        attempt: one idempotent attempt.

    Raises:
        StoreUnavailableError: the retries ran out (one line: operation, object, attempts,
            last status); any non-transient error as it was raised.
    """
    state = _Attempts(operation, target)
    while True:
        try:
            return attempt()
        except Exception as error:  # classified in next_wait
            time.sleep(state.next_wait(error))


async def call_async(operation: str, target: str, attempt: Callable[[], Awaitable[T]]) -> T:
    """call() for coroutines (the s3fs and gcsfs request hooks); same policy and counters."""
    state = _Attempts(operation, target)
    while True:
        try:
            return await attempt()
        except Exception as error:  # classified in next_wait
            await asyncio.sleep(state.next_wait(error))


def settle_conditional(
    operation: str,
    target: str,
    attempt: Callable[[], bool],
    landed: Callable[[], bool],
) -> bool:
    """A conditional write whose attempts may fail after the server applied them.

    attempt() sends the write once and returns False on a failed precondition; transient
    errors are retried under the policy. A failed precondition may be this writer's own
    earlier attempt, applied by the server with its answer lost: to us after a reset or a
    timeout, or silently to a layer below that re-sent the request (aiohttp re-sends a PUT or
    DELETE once when a kept-alive connection drops). So every failed precondition is settled
    by landed(), which reads the object back and decides by the writer's unique bytes.

    Returns:
        True iff this writer's write is in place (or, for a delete, the object is gone).
    """
    state = _Attempts(operation, target)
    while True:
        try:
            won = attempt()
        except Exception as error:  # classified in next_wait
            time.sleep(state.next_wait(error))
            continue
        if won:
            return True
        outcome = call(f"read back after {operation}", target, landed)
        if outcome:
            COUNTERS.add(f"ambiguous {operation}")
            LOGGER.info("%s %s: its answer was lost; read back: it landed", operation, target)
        return outcome
