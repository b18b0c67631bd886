"""Alias of `features.store.compaction`, for README's `python -m features.compact`."""

from features.store.compaction import main, run

__all__ = ["main", "run"]

if __name__ == "__main__":
    main()
