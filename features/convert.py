"""Alias of `features.store.convert`, kept for README's `python -m features.convert`."""

from features.store.convert import main, run

__all__ = ["main", "run"]

if __name__ == "__main__":
    main()
