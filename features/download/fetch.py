"""Fetch one URI with timeouts, bounded retries, backoff with jitter, and a scheme policy."""

from __future__ import annotations

import email.utils
import http.client
import logging
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from features.download import credentials
from features.download.secrets import redact_text, redact_url
from schemas.config_fields import reject_unknown_fields
from schemas.errors import ConfigError
from schemas.labels import DownloadStatus

LOGGER = logging.getLogger(__name__)
LOCAL_SCHEMES = ("", "file")
HTTP_SCHEMES = ("http", "https")
RETRYABLE_HTTP = frozenset({408, 425, 429})
NOT_FOUND_HTTP = frozenset({404, 410})
AUTH_HTTP = frozenset({401, 403})
USER_AGENT = "mlsp-feature-store/0.1"
CHUNK = 1 << 16


@dataclass(frozen=True)
class FetchConfig:
    """How single items are fetched.

    Attributes:
        timeout: seconds per socket operation (connect, each read).
        deadline: seconds one attempt may take in all (stops slow bodies).
        retries: extra attempts after the first, for transient failures only.
        backoff: base delay; attempt n waits backoff * 2**(n-1) * (1 + jitter * U[0,1)).
        backoff_max: cap on any one wait, Retry-After included.
        jitter: relative jitter of the backoff.
        max_bytes: larger bodies are refused (size_mismatch).
        fsspec_schemes: extra URL schemes allowed besides http/https (e.g. gs, s3).
    """

    timeout: float = 20.0
    deadline: float = 120.0
    retries: int = 3
    backoff: float = 0.5
    backoff_max: float = 30.0
    jitter: float = 0.5
    max_bytes: int = 64 * 1024 * 1024
    fsspec_schemes: tuple[str, ...] = ("gs", "s3", "gcs", "az", "abfs", "memory")

    def __post_init__(self) -> None:
        object.__setattr__(self, "fsspec_schemes", tuple(self.fsspec_schemes))
        checks = {
            "timeout": self.timeout > 0,
            "deadline": self.deadline > 0,
            "retries": self.retries >= 0,
            "backoff": self.backoff >= 0,
            "backoff_max": self.backoff_max >= 0,
            "jitter": self.jitter >= 0,
            "max_bytes": self.max_bytes > 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(
                f"--{bad[0].replace('_', '-')}: invalid value {getattr(self, bad[0])!r}"
            )
        if set(self.fsspec_schemes) & {"file", "http", "https", ""}:
            raise ConfigError("fsspec_schemes: may not include file, http or https")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        data = asdict(self)
        data["fsspec_schemes"] = list(self.fsspec_schemes)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FetchConfig:
        """Inverse of to_dict.

        Raises:
            ConfigError: an unknown field or an invalid value.
        """
        reject_unknown_fields(cls, data, "fetch config")
        return cls(**data)


@dataclass(frozen=True)
class FetchOutcome:
    """Result of all attempts on one URI; data is None unless status is OK."""

    data: bytes | None
    status: DownloadStatus
    http_status: int | None
    error: str | None
    attempts: int


class AttemptError(Exception):
    """One failed attempt, classified."""

    def __init__(
        self,
        status: DownloadStatus,
        message: str,
        http_status: int | None = None,
        retryable: bool = True,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.http_status = status, http_status
        self.retryable, self.retry_after = retryable, retry_after


def scheme_of(uri: str) -> str:
    """URL scheme in lower case; '' for plain paths (Windows drive letters count as paths)."""
    scheme = urlsplit(uri).scheme.lower()
    return "" if len(scheme) == 1 else scheme


def check_uri(uri: str, config: FetchConfig, allow_local: bool) -> str | None:
    """Why a URI is refused, or None when it may be fetched.

    Args:
        uri: the URI to check.
        config: allowed fsspec schemes.
        allow_local: whether plain paths and file:// are allowed (only when the user gave a
            local source; never for URIs that came from a remote list).
    """
    scheme = scheme_of(uri)
    if scheme in HTTP_SCHEMES or scheme in config.fsspec_schemes:
        return None
    if scheme in LOCAL_SCHEMES:
        if allow_local:
            return None
        return f"local URI {redact_url(uri)!r} from a remote list is refused"
    return f"scheme {scheme!r} is not allowed (http, https, {', '.join(config.fsspec_schemes)})"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def _read_body(response: Any, config: FetchConfig, started: float) -> bytes:
    declared = response.headers.get("Content-Length")
    chunks, total = [], 0
    while True:
        if time.monotonic() - started > config.deadline:
            raise AttemptError(
                DownloadStatus.TIMEOUT,
                f"body not complete after {config.deadline:g} s (slow server)",
            )
        chunk = response.read1(CHUNK) if hasattr(response, "read1") else response.read(CHUNK)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if total > config.max_bytes:
            raise AttemptError(
                DownloadStatus.SIZE_MISMATCH,
                f"body exceeds {config.max_bytes} bytes",
                retryable=False,
            )
    if declared is not None and declared.isdigit() and total != int(declared):
        raise AttemptError(DownloadStatus.TRUNCATED, f"got {total} of {declared} bytes")
    return b"".join(chunks)


def _http_error(error: urllib.error.HTTPError, origin: str) -> AttemptError:
    code = error.code
    if code in NOT_FOUND_HTTP:
        return AttemptError(DownloadStatus.NOT_FOUND, f"HTTP {code}", code, retryable=False)
    retry_after = parse_retry_after(error.headers.get("Retry-After") if error.headers else None)
    retryable = code in RETRYABLE_HTTP or code >= 500
    hint = f"; {origin}" if code in AUTH_HTTP else ""
    return AttemptError(
        DownloadStatus.HTTP_ERROR,
        f"HTTP {code} {error.reason}{hint}",
        code,
        retryable=retryable,
        retry_after=retry_after,
    )


def http_attempt(uri: str, config: FetchConfig) -> tuple[bytes, int | None]:
    """One GET, with the URL's credentials (see credentials.resolve) and without its userinfo.

    Raises:
        AttemptError: classified as retryable or not; its message carries no secret.
    """
    try:
        auth = credentials.resolve(uri)
    except ConfigError as error:
        raise AttemptError(DownloadStatus.REFUSED, str(error), retryable=False) from None
    request = urllib.request.Request(auth.url, headers={"User-Agent": USER_AGENT})
    credentials.attach(request, auth.headers)
    try:
        return _get(request, config, auth.origin)
    except AttemptError as error:
        raise AttemptError(
            error.status,
            redact_text(str(error), auth.secrets),
            error.http_status,
            error.retryable,
            error.retry_after,
        ) from None


def _get(
    request: urllib.request.Request, config: FetchConfig, origin: str
) -> tuple[bytes, int | None]:
    started = time.monotonic()
    try:
        with credentials.OPENER.open(request, timeout=config.timeout) as response:
            return _read_body(response, config, started), int(response.status)
    except urllib.error.HTTPError as error:
        raise _http_error(error, origin) from None
    except TimeoutError as error:
        raise AttemptError(DownloadStatus.TIMEOUT, f"timed out ({error})") from None
    except http.client.IncompleteRead as error:
        raise AttemptError(DownloadStatus.TRUNCATED, f"truncated body ({error})") from None
    except urllib.error.URLError as error:
        status = (
            DownloadStatus.TIMEOUT
            if isinstance(error.reason, TimeoutError)
            else DownloadStatus.CONNECTION_ERROR
        )
        raise AttemptError(status, f"{error.reason}") from None
    except (ConnectionError, http.client.HTTPException, OSError) as error:
        raise AttemptError(
            DownloadStatus.CONNECTION_ERROR, f"{type(error).__name__}: {error}"
        ) from None


def local_attempt(uri: str, config: FetchConfig) -> tuple[bytes, int | None]:
    """Read a plain path or file:// URL. Raises AttemptError."""
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    try:
        with open(path, "rb") as handle:
            data = handle.read(config.max_bytes + 1)
    except FileNotFoundError:
        raise AttemptError(
            DownloadStatus.NOT_FOUND, f"no such file {path}", retryable=False
        ) from None
    except OSError as error:
        raise AttemptError(DownloadStatus.CONNECTION_ERROR, f"read failed: {error}") from None
    if len(data) > config.max_bytes:
        raise AttemptError(
            DownloadStatus.SIZE_MISMATCH, f"file exceeds {config.max_bytes} bytes", retryable=False
        )
    return data, None


def fsspec_attempt(uri: str, config: FetchConfig) -> tuple[bytes, int | None]:
    """Read an object through fsspec (gs://, s3://, memory://...). Raises AttemptError."""
    import fsspec

    try:
        fs, inner = fsspec.core.url_to_fs(uri)
        return bytes(fs.cat_file(inner)), None
    except FileNotFoundError:
        raise AttemptError(
            DownloadStatus.NOT_FOUND, f"no such object {uri}", retryable=False
        ) from None
    except Exception as error:  # backends raise their own exception types
        raise AttemptError(
            DownloadStatus.CONNECTION_ERROR, f"{type(error).__name__}: {error}"
        ) from None


Attempt = Callable[[str, FetchConfig], tuple[bytes, "int | None"]]
ATTEMPTS: dict[str, Attempt] = {
    "http": http_attempt,
    "https": http_attempt,
    "": local_attempt,
    "file": local_attempt,
}


def backoff_delay(
    attempt: int, config: FetchConfig, retry_after: float | None, rng: random.Random
) -> float:
    """Wait before the next attempt: Retry-After when given, else exponential with jitter."""
    if retry_after is not None:
        return min(retry_after, config.backoff_max)
    base = config.backoff * 2 ** (attempt - 1)
    return float(min(base * (1.0 + config.jitter * rng.random()), config.backoff_max))


def fetch(
    uri: str,
    config: FetchConfig,
    allow_local: bool,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> FetchOutcome:
    """Fetch a URI, retrying transient failures (timeouts, resets, 429, 5xx, truncation).

    http(s) requests authenticate as credentials.resolve says; the outcome's error never holds
    a password, token or signature (see secrets.redact_text).

    Args:
        uri: what to fetch.
        config: timeouts, retries and backoff.
        allow_local: whether local paths are allowed (see check_uri).
        sleep: injectable for tests.
        rng: jitter source (default: a fresh Random).

    Returns:
        The outcome; never raises for item-level failures.
    """
    refusal = check_uri(uri, config, allow_local)
    if refusal is not None:
        return FetchOutcome(None, DownloadStatus.REFUSED, None, refusal, 0)
    attempt_once = ATTEMPTS.get(scheme_of(uri), fsspec_attempt)
    rng = rng or random.Random()
    attempt = 0
    while True:
        attempt += 1
        try:
            data, http_status = attempt_once(uri, config)
            return FetchOutcome(data, DownloadStatus.OK, http_status, None, attempt)
        except AttemptError as error:
            message = redact_text(str(error))
            if not error.retryable or attempt > config.retries:
                return FetchOutcome(None, error.status, error.http_status, message, attempt)
            delay = backoff_delay(attempt, config, error.retry_after, rng)
            LOGGER.debug(
                "%s: attempt %d failed (%s); retrying in %.2f s",
                redact_url(uri),
                attempt,
                message,
                delay,
            )
            sleep(delay)
