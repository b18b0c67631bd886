"""HDF5 features backend: one file per shard (one writer each) plus a Virtual Dataset over them."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from features import files
from features.store.backends import ArrayLayout, FeatureArray, check_compression
from schemas.errors import StoreError

DATASET = "features"
VIRTUAL_FILE = "features.h5"
# h5py filter of each recorded compression: h5py has no Blosc, so both Blosc choices write LZF,
# recorded as "lzf" (stores before that recorded the choice: "zstd" or "lz4").
HDF5_FILTERS: dict[str, str | None] = {"lzf": "lzf", "zstd": "lzf", "lz4": "lzf", "none": None}
# Stores written before compression was a choice have no "compression" in layout.json.
LEGACY_COMPRESSION = "zstd"


class HDF5FeatureArray(FeatureArray):
    """Features in HDF5, which allows one writer per file.

    Each shard is its own file `shards/shard-NNNNNN.h5`, written whole by its worker to a temp
    file and renamed into place. `features.h5` holds a Virtual Dataset `features` over the
    committed shards (NaN elsewhere) for plain h5py users; it is rebuilt by finalize() after a
    run and is consistent whenever no writer is active. Our readers open shard files directly.
    """

    format_name = "hdf5"
    directory_name = "features.hdf5"

    @classmethod
    def written_compression(cls, requested: str) -> str:
        """ "lzf" for either Blosc choice, "none" for none: what write_shard writes.

        Raises:
            ConfigError: an unknown choice.
        """
        return HDF5_FILTERS[check_compression(requested)] or "none"

    def _layout_path(self) -> str:
        return files.join(self.path, "layout.json")

    def shard_key(self, shard_index: int) -> str:
        return f"shards/shard-{shard_index:06d}.h5"

    def shard_path(self, shard_index: int) -> str:
        """File of one shard."""
        return files.join(self.path, self.shard_key(shard_index))

    def _write_layout(self, layout: ArrayLayout) -> None:
        data = {
            "shape": list(layout.shape),
            "dtype": layout.dtype,
            "shard_rows": layout.shard_rows,
            "compression": layout.compression,
        }
        files.atomic_write_text(self._layout_path(), json.dumps(data))

    def create(self, layout: ArrayLayout) -> None:
        files.makedirs(files.join(self.path, "shards"))
        self._write_layout(layout)
        self.finalize([])

    def layout(self) -> ArrayLayout:
        try:
            data = json.loads(files.read_bytes(self._layout_path()))
        except FileNotFoundError as error:
            raise StoreError(f"{self.path}: not an HDF5 features directory ({error})") from error
        shape = tuple(data["shape"])
        return ArrayLayout(
            shape[0],
            shape[1],
            shape[2:],
            data["dtype"],
            int(data["shard_rows"]),
            str(data.get("compression", LEGACY_COMPRESSION)),
        )

    def resize(self, rows: int) -> None:
        self._write_layout(replace(self.layout(), rows=rows))

    def write_shard(self, row_start: int, values: np.ndarray) -> None:
        import h5py

        layout = self.layout()
        if row_start % layout.shard_rows:
            raise StoreError(f"row {row_start} is not on a shard boundary ({layout.shard_rows})")
        local_directory = tempfile.mkdtemp(prefix="mlsp-h5-")
        local_file = os.path.join(local_directory, "shard.h5")
        try:
            with h5py.File(local_file, "w") as handle:
                handle.create_dataset(
                    DATASET,
                    data=values.astype(layout.dtype, copy=False),
                    chunks=(min(layout.chunk_rows, len(values)), *values.shape[1:]),
                    compression=HDF5_FILTERS[layout.compression],
                )
            with open(local_file, "rb") as stream:
                files.atomic_write_bytes(
                    self.shard_path(row_start // layout.shard_rows), stream.read()
                )
        finally:
            if os.path.exists(local_file):
                os.unlink(local_file)
            os.rmdir(local_directory)

    def _read_shard_rows(self, shard_index: int, offsets: np.ndarray) -> np.ndarray | None:
        import h5py

        path = self.shard_path(shard_index)
        if not files.exists(path):
            return None
        if files.is_local(path):
            with h5py.File(files.native(path), "r") as handle:
                return np.asarray(handle[DATASET][offsets])
        fs, inner = files.filesystem(path)
        with fs.open(inner, "rb") as stream, h5py.File(stream, "r") as handle:
            return np.asarray(handle[DATASET][offsets])

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        layout = self.layout()
        output = np.full((len(rows), layout.variants, *layout.feature_shape), np.nan, layout.dtype)
        shard_of_row = np.asarray(rows) // layout.shard_rows
        for shard_index in np.unique(shard_of_row):
            positions = np.flatnonzero(shard_of_row == shard_index)
            offsets = np.asarray(rows)[positions] - shard_index * layout.shard_rows
            values = self._read_shard_rows(int(shard_index), offsets)
            if values is not None:
                output[positions] = values
        return output

    def read_range(self, row_start: int, row_stop: int) -> np.ndarray:
        return self.read_rows(np.arange(row_start, row_stop))

    finalize_reads_shards = True

    def finalize(self, committed: Sequence[Any]) -> None:
        """Rebuild features.h5: a Virtual Dataset mapping every committed shard's file."""
        import h5py

        layout = self.layout()
        virtual = h5py.VirtualLayout(shape=layout.shape, dtype=layout.dtype)
        for shard in committed:
            source_shape = (
                shard.row_stop - shard.row_start,
                layout.variants,
                *layout.feature_shape,
            )
            # Relative file names: HDF5 resolves them against the virtual file's own folder.
            source = h5py.VirtualSource(
                f"shards/shard-{shard.index:06d}.h5", DATASET, shape=source_shape
            )
            virtual[shard.row_start : shard.row_stop] = source
        local_directory = tempfile.mkdtemp(prefix="mlsp-vds-")
        local_file = os.path.join(local_directory, VIRTUAL_FILE)
        try:
            with h5py.File(local_file, "w", libver="latest") as handle:
                handle.create_virtual_dataset(DATASET, virtual, fillvalue=np.nan)
                handle.attrs["committed_shards"] = [shard.index for shard in committed]
            with open(local_file, "rb") as stream:
                files.atomic_write_bytes(files.join(self.path, VIRTUAL_FILE), stream.read())
        finally:
            if os.path.exists(local_file):
                os.unlink(local_file)
            os.rmdir(local_directory)
