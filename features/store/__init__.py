"""Feature store: views of MLSP features with a Parquet index, commit markers and lineage.

The public entry points: `FeatureStore` (reads), `ensure_store` (the root marker),
`verify_view`, `convert_view` / `export_ava_mlsp` and `publish_snapshot` / `compact_view`; the rest of `features.store` is internal.
"""

from features.store.backends import FeatureArray
from features.store.compaction import compact_view, publish_snapshot
from features.store.convert import convert_view, export_ava_mlsp
from features.store.formats import BACKENDS
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
    "compact_view",
    "convert_view",
    "ensure_store",
    "export_ava_mlsp",
    "publish_snapshot",
    "verify_view",
]
