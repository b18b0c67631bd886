"""Pure feature logic: image decoding, the MLSP model, the feature store and queries."""
