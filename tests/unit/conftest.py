"""Unit-test fixtures: a short lease fencing window (takeovers otherwise wait 10 s each)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _short_lease_fence(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fencing window 0.1 s at the default TTL; tests of the window itself set their own."""
    from features.store import lease

    monkeypatch.setattr(lease, "FENCE_FRACTION", 1 / 1200)
