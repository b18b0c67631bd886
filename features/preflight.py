"""Cheap checks of a run's environment before any model is built: one line per problem."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

from features import files, retries
from schemas.errors import PreflightError, StoreError, StoreUnavailableError

# A check should answer in seconds: an unreachable endpoint must not wait out the run's policy.
PREFLIGHT_POLICY = retries.RetryPolicy(max_retries=2, timeout_seconds=10, max_backoff=2)
PROBE_PREFIX = ".mlsp-write-probe-"
# Errors of the cloud libraries, by class name (no import of botocore or google.auth here).
_MISSING_CREDENTIALS = {
    "NoCredentialsError": "no AWS credentials found: set AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY, a profile in ~/.aws, or the key/secret in FSSPEC_S3",
    "PartialCredentialsError": "incomplete AWS credentials: set both AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY (or a profile in ~/.aws)",
    "DefaultCredentialsError": "no Google credentials found: run `gcloud auth "
    "application-default login`, set GOOGLE_APPLICATION_CREDENTIALS, or a token in FSSPEC_GS",
    "RefreshError": "the Google credentials could not be refreshed: log in again or set "
    "GOOGLE_APPLICATION_CREDENTIALS",
}


def check_input_file(path: str, flag: str) -> None:
    """An input file (manifest, labels) exists and is a file.

    Raises:
        PreflightError: it is missing, a directory, unreadable, or its store cannot be reached.
    """
    with _explained(path, flag, "read"):
        if files.is_local(path):
            local = files.native(path)
            if os.path.isdir(local):
                raise PreflightError(f"{flag} {path}: is a directory, not a file")
            if not os.path.exists(local):
                raise PreflightError(f"{flag} {path}: no such file")
            if not os.access(local, os.R_OK):
                raise PreflightError(f"{flag} {path}: permission denied (not readable)")
            return
        if not files.exists(path):
            raise PreflightError(f"{flag} {path}: no such object (check the bucket and the path)")


def check_writable_folder(path: str, flag: str) -> None:
    """A folder a run writes (store, output): creatable, a folder, and writable, proven by
    creating and deleting a probe file in it (an object store: a probe object).

    Raises:
        PreflightError: a file is in the way, the folder cannot be created or written, no
            credentials, permission denied, or the endpoint is unreachable (one line each).
    """
    with _explained(path, flag, "write"):
        if files.is_local(path):
            _check_local_folder(files.native(path), flag, path)
        probe = files.join(path, f"{PROBE_PREFIX}{uuid.uuid4().hex}")
        files.atomic_write_bytes(probe, b"")
        files.remove_file(probe)


def _check_local_folder(local: str, flag: str, shown: str) -> None:
    existing = local
    while existing and not os.path.exists(existing):
        existing = os.path.dirname(existing.rstrip("/")) or ("/" if local.startswith("/") else "")
    if existing and not os.path.isdir(existing):
        raise PreflightError(f"{flag} {shown}: {existing} is a file, not a folder")
    try:
        os.makedirs(local, exist_ok=True)
    except OSError as error:
        raise PreflightError(
            f"{flag} {shown}: cannot create the folder ({error.strerror})"
        ) from None


@contextlib.contextmanager
def _explained(path: str, flag: str, action: str) -> Iterator[None]:
    """Turn what the file system or a cloud library raises into one PreflightError line."""
    with retries.temporarily(PREFLIGHT_POLICY):
        try:
            yield
        except PreflightError:
            raise
        except PermissionError as error:
            raise PreflightError(
                f"{flag} {path}: permission denied ({_short(error)}); check the "
                f"credentials' right to {action} there"
            ) from None
        except StoreUnavailableError as error:
            raise PreflightError(
                f"{flag} {path}: the store does not answer ({_short(error)}); check the "
                "endpoint (FSSPEC_S3 / FSSPEC_GS) and the network"
            ) from None
        except (OSError, StoreError, ValueError) as error:
            raise PreflightError(f"{flag} {path}: cannot {action} ({_short(error)})") from None
        except Exception as error:
            hint = _credentials_hint(error)
            if hint is None:
                raise
            raise PreflightError(f"{flag} {path}: {hint}") from None


def _credentials_hint(error: BaseException) -> str | None:
    current: BaseException | None = error
    while current is not None:
        for cls in type(current).__mro__:
            if cls.__name__ in _MISSING_CREDENTIALS:
                return _MISSING_CREDENTIALS[cls.__name__]
        current = current.__cause__ or current.__context__
    return None


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."
