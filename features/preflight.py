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
# Concurrent checks of one new folder each remove what they created; a few tries settle it.
_RACE_ATTEMPTS = 8
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
    _check_input(path, flag, folder=False)


def check_input_folder(path: str, flag: str) -> None:
    """An input folder (a store to read, images) exists and is a folder (on an object store:
    something exists under the prefix).

    Raises:
        PreflightError: it is missing, a file, unreadable, or its store cannot be reached.
    """
    _check_input(path, flag, folder=True)


def check_reachable(path: str, flag: str) -> None:
    """The store holding path answers with the credentials at hand (local paths: no check);
    whether path exists is left to the caller, whose own error (and exit code) says so.

    Raises:
        PreflightError: no credentials, permission denied, or the endpoint does not answer.
    """
    if not files.is_local(path):
        with _explained(path, flag, "read"):
            files.exists(path)


def check_writable_folder(path: str, flag: str) -> None:
    """A folder a run writes (store, output): creatable, a folder, and writable, proven by
    creating and deleting a probe file in it (an object store: a probe object).

    Raises:
        PreflightError: a file is in the way, the folder cannot be created or written, no
            credentials, permission denied, or the endpoint is unreachable (one line each).
    """
    _probe_folder(path, flag, path)


def check_output_file(path: str, flag: str) -> None:
    """A file a run writes (a Parquet table, a model): not a folder, and its folder creatable
    and writable (check_writable_folder's probe); the file itself is not created.

    Raises:
        PreflightError: a folder or file is in the way, the folder cannot be created or
            written, no credentials, permission denied, or the endpoint is unreachable.
    """
    if files.is_local(path) and os.path.isdir(files.native(path)):
        raise PreflightError(f"{flag} {path}: is a folder, not a file")
    if files.is_local(path):
        parent = os.path.dirname(files.native(path).rstrip("/")) or "."
    else:
        parent = path.rstrip("/").rsplit("/", 1)[0]
    _probe_folder(parent, flag, path)


def _check_input(path: str, flag: str, folder: bool) -> None:
    kind, other = ("folder", "file") if folder else ("file", "folder")
    with _explained(path, flag, "read"):
        if not files.is_local(path):
            if not files.exists(path):
                raise PreflightError(
                    f"{flag} {path}: no such {'prefix' if folder else 'object'} "
                    "(check the bucket and the path)"
                )
            return
        local = files.native(path)
        if not os.path.exists(local):
            raise PreflightError(f"{flag} {path}: no such {kind}")
        if os.path.isdir(local) != folder:
            raise PreflightError(f"{flag} {path}: is a {other}, not a {kind}")
        if not os.access(local, os.R_OK):
            raise PreflightError(f"{flag} {path}: permission denied (not readable)")


def _probe_folder(folder: str, flag: str, shown: str) -> None:
    """Prove folder writable with a probe file; errors name flag and shown (the flag's value)."""
    with _explained(shown, flag, "write"):
        if files.is_local(folder):
            _probe_local(files.native(folder), flag, shown)
            return
        probe = files.join(folder, f"{PROBE_PREFIX}{uuid.uuid4().hex}")
        files.atomic_write_bytes(probe, b"")
        files.remove_file(probe)


def _probe_local(local: str, flag: str, shown: str) -> None:
    """Create local, write and delete a probe file in it, then remove the folders this check
    created: a run that fails later leaves nothing behind, and its own writes create them again
    (files.atomic_write_bytes makes a file's folders)."""
    existing = _nearest_existing(local)
    if not os.path.isdir(existing):
        raise PreflightError(f"{flag} {shown}: {existing} is a file, not a folder")
    try:
        try:
            _make_folders(local)
        except OSError as error:
            folder = "" if local == files.native(shown) else f" {local}"
            raise PreflightError(
                f"{flag} {shown}: cannot create the folder{folder} ({error.strerror})"
            ) from None
        try:
            _write_probe(local)
        except OSError as error:  # the probe's temporary name would only confuse
            where = "" if local == files.native(shown) else f" in {local}"
            raise PreflightError(
                f"{flag} {shown}: cannot write{where} ({error.strerror})"
            ) from None
    finally:
        created = os.path.abspath(local)
        while created != existing and os.path.isdir(created):
            try:
                os.rmdir(created)  # only if empty: another process may write there meanwhile
            except OSError:
                break
            created = os.path.dirname(created)


def _make_folders(local: str) -> None:
    """os.makedirs, retried while a concurrent run's check removes the folders it had just
    created: makedirs then sees EEXIST for a folder that is gone by the time it looks again."""
    for attempt in range(_RACE_ATTEMPTS):
        try:
            os.makedirs(local, exist_ok=True)
            return
        except (FileExistsError, FileNotFoundError):
            racing = os.path.isdir(_nearest_existing(local))  # a file in the way is no race
            if not racing or attempt + 1 == _RACE_ATTEMPTS:
                raise


def _write_probe(local: str) -> None:
    """Write and delete a probe file in local (files' local writes make the folder again if a
    concurrent run's check removed it meanwhile)."""
    probe = os.path.join(local, f"{PROBE_PREFIX}{uuid.uuid4().hex}")
    files.atomic_write_bytes(probe, b"")
    files.remove_file(probe)


def _nearest_existing(local: str) -> str:
    """The longest prefix of local's absolute path that exists ('/' at worst)."""
    current = os.path.abspath(local)
    while not os.path.exists(current):
        current = os.path.dirname(current)
    return current


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
