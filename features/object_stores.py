"""Conditional writes on S3 and GCS: exclusive create and compare-and-swap, decided by the server.

S3 and GCS both decide a conditional write atomically on the server: of any number of
racing writers exactly one passes the precondition, the others get HTTP 412.

| operation | S3 (s3fs) | GCS (gcsfs) |
| --- | --- | --- |
| create if absent | PutObject `If-None-Match: *` | upload `ifGenerationMatch=0` |
| replace if unchanged | GetObject -> ETag, PutObject `If-Match: ETag` | GET -> generation, upload `ifGenerationMatch=N` |
| remove if unchanged | DeleteObject `If-Match: ETag` | DELETE `ifGenerationMatch=N` |

Each function takes the fsspec filesystem and the path inside it; features.files selects them
by protocol. Reads return the body and its version token from one request, so the token always
belongs to the bytes compared. A write whose answer is lost (reset, timeout, 5xx) is retried;
when the retry then fails its precondition, the object is read back and the write counts as
ours iff it holds our exact bytes (every payload carries a unique writer token).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from features import retries

# S3 error codes of a lost conditional write: 412 PreconditionFailed, and 409
# ConditionalRequestConflict when another conditional write to the key is in flight.
_S3_LOST_RACE = {"PreconditionFailed", "ConditionalRequestConflict"}
# A multipart upload: GCS checks ifGenerationMatch on every upload type, and fake-gcs-server
# (the test emulator) only on this one, so one code path serves both.
_BOUNDARY = "==mlsp-feature-store=="


def _s3_lost_race(error: OSError) -> bool:
    """Whether an s3fs error is a failed precondition (s3fs keeps the botocore error as cause)."""
    if isinstance(error, FileExistsError):
        return True
    response = getattr(error.__cause__, "response", None) or {}
    return response.get("Error", {}).get("Code") in _S3_LOST_RACE


def _s3_put_if(fs: Any, path: str, data: bytes, **condition: str) -> bool:
    """One conditional PutObject (s3fs: mode="create" or IfMatch=ETag); False when its
    precondition failed. For IfMatch, an object removed meanwhile fails it too."""
    try:
        fs.pipe_file(path, data, **condition)
    except FileNotFoundError:
        if "IfMatch" not in condition:
            raise
        return False
    except OSError as error:
        if _s3_lost_race(error):
            return False
        raise
    return True


def s3_create_exclusive(fs: Any, path: str, data: bytes) -> bool:
    """PutObject with If-None-Match: * (True iff this call created the object)."""
    return retries.settle_conditional(
        "create",
        f"s3://{path}",
        lambda: _s3_put_if(fs, path, data, mode="create"),
        lambda: _s3_holds(fs, path, data),
    )


def _s3_read_once(fs: Any, path: str) -> tuple[bytes, str] | None:
    bucket, key, _ = fs.split_path(path)
    try:
        response = fs.call_s3("get_object", Bucket=bucket, Key=key)
    except FileNotFoundError:
        return None
    body = asyncio.run_coroutine_threadsafe(response["Body"].read(), fs.loop).result()
    return bytes(body), str(response["ETag"])


def _s3_read(fs: Any, path: str) -> tuple[bytes, str] | None:
    """(body, ETag) from one GetObject, or None if the object does not exist (retried whole:
    a reset while the body streams fails after the call itself succeeded)."""
    return retries.call("S3 GET", f"s3://{path}", lambda: _s3_read_once(fs, path))


def _s3_holds(fs: Any, path: str, data: bytes | None) -> bool:
    """Whether the object holds exactly data (None: whether it is absent)."""
    current = _s3_read(fs, path)
    return current is None if data is None else current is not None and current[0] == data


def s3_read_bytes(fs: Any, path: str) -> bytes:
    """A whole object in one GetObject (s3fs >= 2025.5 sends a HEAD first, for its size).

    Raises:
        FileNotFoundError: no such object.
    """
    current = _s3_read(fs, path)
    if current is None:
        raise FileNotFoundError(path)
    return current[0]


def s3_replace_if_unchanged(fs: Any, path: str, expected: bytes, data: bytes) -> bool:
    """Replace the object with data iff it holds expected: PutObject If-Match its ETag."""

    def attempt() -> bool:
        current = _s3_read(fs, path)
        if current is None or current[0] != expected:
            return False
        return _s3_put_if(fs, path, data, IfMatch=current[1])

    return retries.settle_conditional(
        "replace", f"s3://{path}", attempt, lambda: _s3_holds(fs, path, data)
    )


def s3_remove_if_unchanged(fs: Any, path: str, expected: bytes) -> bool:
    """Delete the object iff it holds expected: DeleteObject If-Match its ETag."""
    bucket, key, _ = fs.split_path(path)

    def attempt() -> bool:
        current = _s3_read(fs, path)
        if current is None or current[0] != expected:
            return False
        try:
            fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=current[1])
        except OSError as error:
            if _s3_lost_race(error) or isinstance(error, FileNotFoundError):
                return False
            raise
        finally:
            fs.invalidate_cache(path)
        return True

    return retries.settle_conditional(
        "remove", f"s3://{path}", attempt, lambda: _s3_holds(fs, path, None)
    )


def _gcs_object_url(fs: Any, path: str, prefix: str = "") -> str:
    bucket, key, _ = fs.split_path(path)
    return f"{fs._location}{prefix}/storage/v1/b/{quote(bucket, safe='')}/o/{quote(key, safe='')}"


def _gcs_read(fs: Any, path: str) -> tuple[bytes, int] | None:
    """(body, generation) from one media GET, or None if the object does not exist."""
    try:
        headers, body = fs.call("GET", _gcs_object_url(fs, path, "/download"), alt="media")
    except FileNotFoundError:
        return None
    generation = {key.lower(): value for key, value in headers.items()}["x-goog-generation"]
    return bytes(body), int(generation)


def _gcs_holds(fs: Any, path: str, data: bytes | None) -> bool:
    """Whether the object holds exactly data (None: whether it is absent)."""
    current = _gcs_read(fs, path)
    return current is None if data is None else current is not None and current[0] == data


def _gcs_upload_if_generation(fs: Any, path: str, data: bytes, generation: int) -> bool:
    """Multipart upload with ifGenerationMatch (0: must not exist); False on HTTP 412."""
    bucket, key, _ = fs.split_path(path)
    metadata = json.dumps({"name": key}).encode()
    body = b"".join(
        [
            f"--{_BOUNDARY}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n".encode(),
            metadata,
            f"\r\n--{_BOUNDARY}\r\nContent-Type: application/octet-stream\r\n\r\n".encode(),
            data,
            f"\r\n--{_BOUNDARY}--".encode(),
        ]
    )
    try:
        fs.call(
            "POST",
            f"{fs._location}/upload/storage/v1/b/{quote(bucket, safe='')}/o",
            uploadType="multipart",
            ifGenerationMatch=str(generation),
            data=body,
            headers={"Content-Type": f'multipart/related; boundary="{_BOUNDARY}"'},
            json_out=True,
        )
    except FileExistsError:  # gcsfs raises this for every 412 Precondition Failed
        return False
    finally:
        fs.invalidate_cache(path)
    return True


def gcs_create_exclusive(fs: Any, path: str, data: bytes) -> bool:
    """Upload with ifGenerationMatch=0 (True iff this call created the object)."""
    return retries.settle_conditional(
        "create",
        f"gs://{path}",
        lambda: _gcs_upload_if_generation(fs, path, data, 0),
        lambda: _gcs_holds(fs, path, data),
    )


def gcs_replace_if_unchanged(fs: Any, path: str, expected: bytes, data: bytes) -> bool:
    """Replace the object with data iff it holds expected: upload ifGenerationMatch=its generation."""

    def attempt() -> bool:
        current = _gcs_read(fs, path)
        if current is None or current[0] != expected:
            return False
        return _gcs_upload_if_generation(fs, path, data, current[1])

    return retries.settle_conditional(
        "replace", f"gs://{path}", attempt, lambda: _gcs_holds(fs, path, data)
    )


def gcs_remove_if_unchanged(fs: Any, path: str, expected: bytes) -> bool:
    """Delete the object iff it holds expected: DELETE ifGenerationMatch=its generation."""

    def attempt() -> bool:
        current = _gcs_read(fs, path)
        if current is None or current[0] != expected:
            return False
        try:
            fs.call("DELETE", _gcs_object_url(fs, path), ifGenerationMatch=str(current[1]))
        except (FileExistsError, FileNotFoundError):
            return False
        finally:
            fs.invalidate_cache(path)
        return True

    return retries.settle_conditional(
        "remove", f"gs://{path}", attempt, lambda: _gcs_holds(fs, path, None)
    )


# By fsspec protocol (s3fs registers s3 and s3a, gcsfs gs and gcs).
READ_BYTES: dict[str, Callable[[Any, str], bytes]] = {"s3": s3_read_bytes, "s3a": s3_read_bytes}
CREATE_EXCLUSIVE: dict[str, Callable[[Any, str, bytes], bool]] = {
    "s3": s3_create_exclusive,
    "s3a": s3_create_exclusive,
    "gs": gcs_create_exclusive,
    "gcs": gcs_create_exclusive,
}
REPLACE_IF_UNCHANGED: dict[str, Callable[[Any, str, bytes, bytes], bool]] = {
    "s3": s3_replace_if_unchanged,
    "s3a": s3_replace_if_unchanged,
    "gs": gcs_replace_if_unchanged,
    "gcs": gcs_replace_if_unchanged,
}
REMOVE_IF_UNCHANGED: dict[str, Callable[[Any, str, bytes], bool]] = {
    "s3": s3_remove_if_unchanged,
    "s3a": s3_remove_if_unchanged,
    "gs": gcs_remove_if_unchanged,
    "gcs": gcs_remove_if_unchanged,
}
