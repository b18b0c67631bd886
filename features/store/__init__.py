"""Feature store: views of MLSP features with a Parquet index, commit markers and lineage."""

from features.store.backends import BACKENDS, FeatureArray
from features.store.view import CommitMarker, FeatureView, ShardSpec

__all__ = ["BACKENDS", "CommitMarker", "FeatureArray", "FeatureView", "ShardSpec"]
