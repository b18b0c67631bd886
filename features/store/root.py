"""The store root: its marker file, created once, naming the format and version."""

from __future__ import annotations

import json

from features import files

STORE_MARKER = "store.json"
STORE_FORMAT = {"format": "mlsp-feature-store", "version": 1}


def ensure_store(store: str) -> None:
    """Create the store root marker if absent.

    Args:
        store: local path or fsspec URL of the store root.
    """
    marker = files.join(store, STORE_MARKER)
    if not files.exists(marker):
        files.atomic_write_text(marker, json.dumps(STORE_FORMAT))
