"""Crop/flip geometry on images whose pixels encode their own coordinates."""

from __future__ import annotations

import numpy as np
import pytest

from features.extraction.variants import VARIANT_SETS, apply_variant, parse_variants, stack_variants
from schemas.errors import ConfigError


def _coordinates(height: int, width: int) -> np.ndarray:
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([rows, cols], axis=-1)


def test_reference_names() -> None:
    assert VARIANT_SETS["train8"] == (
        "0_0_0",
        "0_0_1",
        "0_1_0",
        "0_1_1",
        "1_0_0",
        "1_0_1",
        "1_1_0",
        "1_1_1",
    )
    assert len(VARIANT_SETS["tta18"]) == 18 and "0.5_0.5_1" in VARIANT_SETS["tta18"]


@pytest.mark.parametrize(
    ("name", "top", "left", "flip"),
    [
        ("0_0_0", 0, 0, False),
        ("1_1_0", 12, 25, False),
        ("0.5_0.5_0", 6, 13, False),
        ("0_1_1", 0, 25, True),
        ("orig", 0, 0, False),
    ],
)
def test_crop_position_and_flip(name, top, left, flip) -> None:
    height, width = 100, 200  # crops are round(87.5) = 88 (banker's) x 175
    image = _coordinates(height, width)
    out = apply_variant(image, name)
    expected_h, expected_w = (
        (height, width) if name == "orig" else (round(0.875 * height), round(0.875 * width))
    )
    assert out.shape[:2] == (expected_h, expected_w)
    first_column = out[:, -1] if flip else out[:, 0]
    assert first_column[0, 0] == top and first_column[0, 1] == left
    if flip:
        assert out[0, 0, 1] == left + expected_w - 1  # flipped after the crop


def test_stack_and_parse() -> None:
    batch = stack_variants(_coordinates(80, 96), VARIANT_SETS["train8"])
    assert batch.shape == (8, 70, 84, 2)
    assert parse_variants("0_0.5_1,orig") == ("0_0.5_1", "orig")
    with pytest.raises(ConfigError, match="2_0_0"):
        parse_variants("2_0_0")
    with pytest.raises(ConfigError, match="different sizes"):
        stack_variants(_coordinates(80, 96), ("orig", "0_0_0"))
