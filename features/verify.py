"""Alias of `features.store.verify`, kept for README's `python -m features.verify`."""

from features.store.verify import main, run

__all__ = ["main", "run"]

if __name__ == "__main__":
    main()
