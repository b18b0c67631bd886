"""Feature store: views of MLSP features with a Parquet index, commit markers and lineage.

The public entry points: `FeatureStore` (reads), `ensure_store` (the root marker),
`verify_view`, `convert_view` / `export_ava_mlsp`, `publish_snapshot` / `compact_view` and
`view_status`; for the extraction and the training input also the view (`FeatureView`,
`ShardSpec`, `CommitMarker`, `ViewLease`) and the read primitives below. Code outside
`features/store/` imports these names from `features.store`, never a submodule
(tests/unit/test_import_rules.py checks it).
"""

from features.store.backends import COMPRESSIONS, FeatureArray
from features.store.compaction import (
    Publication,
    compact_view,
    publish_snapshot,
    publish_with_markers,
)
from features.store.convert import convert_view, export_ava_mlsp
from features.store.formats import BACKENDS
from features.store.lease import DEFAULT_TTL_SECONDS, LeaseFence, ViewLease
from features.store.query import FeatureStore, read_feature_rows
from features.store.root import STORE_MARKER, ensure_store
from features.store.row_scatter import ScatterRequest, key_runs
from features.store.shard_reader import decode_threads
from features.store.shards import CommitMarker, ShardSpec, image_ids_digest
from features.store.status import view_status
from features.store.verify import VerificationReport, verify_view
from features.store.view import FeatureView

__all__ = [
    "BACKENDS",
    "COMPRESSIONS",
    "DEFAULT_TTL_SECONDS",
    "STORE_MARKER",
    "CommitMarker",
    "FeatureArray",
    "FeatureStore",
    "FeatureView",
    "LeaseFence",
    "Publication",
    "ScatterRequest",
    "ShardSpec",
    "VerificationReport",
    "ViewLease",
    "compact_view",
    "convert_view",
    "decode_threads",
    "ensure_store",
    "export_ava_mlsp",
    "image_ids_digest",
    "key_runs",
    "publish_snapshot",
    "publish_with_markers",
    "read_feature_rows",
    "verify_view",
    "view_status",
]
