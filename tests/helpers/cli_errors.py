"""What a CLI's refusal of its environment must look like: one 'error:' line, nothing written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The single 'error:' line the command printed (fails on none or several)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


def tree(root: Path) -> set[str]:
    """Every file and folder under root, relative to it (to show that nothing was written)."""
    return {
        os.path.relpath(os.path.join(folder, name), root)
        for folder, folders, names in os.walk(root)
        for name in [*folders, *names]
    }
