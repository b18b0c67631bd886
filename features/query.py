"""Alias of `features.store.query`, kept for README's `python -m features.query`."""

from features.store.query import FeatureStore, main, run

__all__ = ["FeatureStore", "main", "run"]

if __name__ == "__main__":
    main()
