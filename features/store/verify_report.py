"""What a verification found: problems (it failed) and notes (worth knowing)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class VerificationReport:
    """Problems (make verification fail) and notes (worth knowing, not wrong)."""

    view: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    shards_checked: int = 0
    rows_checked: int = 0

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems
