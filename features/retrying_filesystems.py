"""s3fs and gcsfs with their own retries off and every request retried by features.retries.

Every S3 API call of s3fs (listing pages included) goes through `S3FileSystem._call_s3`, and
every GCS request of gcsfs through `GCSFileSystem._request`: hooking those two covers reads,
lists, writes and deletes of the store, of Zarr and of the point readers alike. botocore's,
s3fs's and gcsfs's own retry loops are switched off, so a request is retried in one place,
under one policy, and counted once. Conditional requests (If-None-Match, If-Match,
ifGenerationMatch) pass through once: a retry of one whose answer was lost can meet its own
write as a failed precondition, so features.object_stores settles them by reading back.
"""

from __future__ import annotations

import threading
from typing import Any

import fsspec

from features import retries

_S3_CONDITIONS = ("IfNoneMatch", "IfMatch")
_GCS_CONDITIONS = ("ifGenerationMatch", "ifMetagenerationMatch")
_installed: set[str] = set()
_install_lock = threading.Lock()


def _s3_class(base: type) -> type:
    class RetryingS3FileSystem(base):  # type: ignore[misc,valid-type]
        """s3fs with botocore's and s3fs's retries off; features.retries retries each call."""

        retries = 1  # s3fs's own loop: one attempt (features.retries is the one retry layer)

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            config = dict(kwargs.pop("config_kwargs", None) or {})
            config["retries"] = {"total_max_attempts": 1}  # botocore's own retries off
            super().__init__(*args, config_kwargs=config, **kwargs)

        async def _call_s3(self, method: str, *akwarglist: Any, **kwargs: Any) -> Any:
            call = super()._call_s3
            options = {key for group in (*akwarglist, kwargs) for key in group}
            if options.intersection(_S3_CONDITIONS):
                return await call(method, *akwarglist, **kwargs)
            target = (
                f"s3://{kwargs.get('Bucket', '')}/{kwargs.get('Key', kwargs.get('Prefix', ''))}"
            )
            return await retries.call_async(
                f"S3 {method}", target, lambda: call(method, *akwarglist, **kwargs)
            )

        async def _cat_file(self, path: str, *args: Any, **kwargs: Any) -> Any:
            # The body is read after the call: a reset mid-body is retried here.
            cat = super()._cat_file
            return await retries.call_async(
                "S3 read", f"s3://{path}", lambda: cat(path, *args, **kwargs)
            )

    return RetryingS3FileSystem


def _gcs_class(base: Any) -> type:
    undecorated: Any = getattr(base._request, "__wrapped__", base._request)  # gcsfs's loop off

    class RetryingGCSFileSystem(base):  # type: ignore[misc,valid-type]
        """gcsfs whose requests are retried by features.retries (gcsfs's decorator bypassed)."""

        async def _request(self, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
            if set(kwargs).intersection(_GCS_CONDITIONS):
                return await undecorated(self, method, path, *args, **kwargs)
            target = self._format_path(path, args)
            return await retries.call_async(
                f"GCS {method}", target, lambda: undecorated(self, method, path, *args, **kwargs)
            )

    return RetryingGCSFileSystem


# By fsspec protocol: the subclass factory of the registered implementation.
_FACTORIES = {"s3": _s3_class, "s3a": _s3_class, "gs": _gcs_class, "gcs": _gcs_class}


def install(protocol: str) -> None:
    """Register the retrying subclass of the protocol's fsspec implementation (once per
    process; idempotent). Other protocols are left alone."""
    factory = _FACTORIES.get(protocol)
    if factory is None or protocol in _installed:
        return
    with _install_lock:
        if protocol in _installed:
            return
        base = fsspec.get_filesystem_class(protocol)
        if not getattr(base, "_mlsp_retrying", False):
            retrying: Any = factory(base)
            retrying._mlsp_retrying = True
            fsspec.register_implementation(protocol, retrying, clobber=True)
        _installed.add(protocol)
