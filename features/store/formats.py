"""Registry of the features-array formats by name (Zarr, HDF5)."""

from __future__ import annotations

from features.store.backends import FeatureArray, ZarrFeatureArray
from features.store.hdf5_backend import HDF5FeatureArray
from schemas.errors import StoreError

BACKENDS: dict[str, type[FeatureArray]] = {
    backend.format_name: backend for backend in (ZarrFeatureArray, HDF5FeatureArray)
}


def backend_for(format_name: str, view_path: str) -> FeatureArray:
    """Instantiate the registered backend for a format name.

    Raises:
        StoreError: unknown format.
    """
    try:
        backend_class = BACKENDS[format_name]
    except KeyError:
        raise StoreError(
            f"unknown store format {format_name!r}; known: {sorted(BACKENDS)}"
        ) from None
    return backend_class(view_path)
