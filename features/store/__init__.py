"""Feature store: views of MLSP features with a Parquet index, commit markers and lineage.

The public entry points: `FeatureStore` (reads), `ensure_store` (the root marker),
`verify_view` and `convert_view` / `export_ava_mlsp`; the rest of `features.store` is internal.
"""

from features.store.backends import BACKENDS, FeatureArray
from features.store.convert import convert_view, export_ava_mlsp
from features.store.query import FeatureStore
from features.store.root import STORE_MARKER, ensure_store
from features.store.verify import VerificationReport, verify_view
from features.store.view import CommitMarker, FeatureView, ShardSpec

__all__ = [
    "BACKENDS",
    "STORE_MARKER",
    "CommitMarker",
    "FeatureArray",
    "FeatureStore",
    "FeatureView",
    "ShardSpec",
    "VerificationReport",
    "convert_view",
    "ensure_store",
    "export_ava_mlsp",
    "verify_view",
]
