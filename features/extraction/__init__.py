"""Extraction logic: image decoding, variants, run planning and one shard end to end."""
