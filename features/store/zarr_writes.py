"""The Zarr store a shard writer writes through: no read before a whole-shard write, bytes hashed as set."""

from __future__ import annotations

import hashlib
from typing import Any

from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import FsspecStore, LocalStore, WrapperStore

from features import files

# Zarr v3's default chunk key encoding puts every chunk (here: every shard) under "c/".
CHUNK_PREFIX = "c/"


class WholeShardWrites(WrapperStore[Any]):
    """Wraps the features array's store for the one process that writes its shards.

    zarr-python encodes any write to a sharded array as a partial shard update: it first
    fetches the stored shard to merge into (on S3 a HEAD, then a LIST when the object does not
    exist yet, or a GET of the whole shard when it does). This store's writer always writes a
    pipeline shard whole, by one writer (the view's lease holder), so the stored object's
    content is never kept: reads of chunk keys answer "absent" without a request, and the
    rows outside the write stay at the fill value, as they would in a fresh shard.

    The bytes of every chunk object set are hashed on the way out, so the commit marker's
    checksum covers exactly what was stored without reading the object back.

    Never use it to read features: chunk reads through it see nothing.
    """

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self.written: dict[str, tuple[str, int]] = {}  # chunk key -> (sha256, bytes)

    @classmethod
    def for_path(cls, path: str) -> WholeShardWrites:
        """The wrapper around the store zarr.open_array(path) would build (local or fsspec)."""
        location = files.native(path)
        if files.is_local(path):
            return cls(LocalStore(location))
        return cls(FsspecStore.from_url(location))

    def _with_store(self, store: Any) -> WholeShardWrites:
        wrapper = type(self)(store)
        wrapper.written = self.written  # zarr re-wraps (with_read_only): one record for all
        return wrapper

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        if key.startswith(CHUNK_PREFIX):
            return None
        return await self._store.get(key, prototype, byte_range)

    async def set(self, key: str, value: Buffer) -> None:
        await self._store.set(key, value)
        if key.startswith(CHUNK_PREFIX):
            data = value.as_numpy_array()  # a view of the bytes zarr set, no copy
            self.written[key] = (hashlib.sha256(data.data).hexdigest(), int(data.nbytes))

    def take_checksum(self, key: str) -> tuple[str, int] | None:
        """(sha256, size) of the chunk object last set under key, forgotten once taken; None
        when this writer did not set it (a bulk writer wrote the array another way)."""
        return self.written.pop(key, None)
