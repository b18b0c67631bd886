"""Augmentation variants: 'orig' and the reference's crop/flip variants named '%g_%g_%d'."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from schemas.errors import ConfigError

CROP_FRACTION = 0.875
ORIGINAL = "orig"
_VARIANT_PATTERN = re.compile(r"^(0|0\.5|1)_(0|0\.5|1)_([01])$")


def variant_name(row_position: float, column_position: float, flip: int) -> str:
    """Reference naming: '%g_%g_%d' % (i, j, flip)."""
    return "%g_%g_%d" % (row_position, column_position, flip)  # noqa: UP031 (reference naming)


VARIANT_SETS: dict[str, tuple[str, ...]] = {
    ORIGINAL: (ORIGINAL,),
    "train8": tuple(variant_name(i, j, f) for i in (0, 1) for j in (0, 1) for f in (0, 1)),
    "tta18": tuple(variant_name(i, j, f) for i in (0, 0.5, 1) for j in (0, 0.5, 1) for f in (0, 1)),
}


def parse_variants(text: str) -> tuple[str, ...]:
    """'orig', 'train8', 'tta18' or a comma-separated list of variant names.

    Raises:
        ConfigError: an unknown name.
    """
    if text in VARIANT_SETS:
        return VARIANT_SETS[text]
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    for name in names:
        if name != ORIGINAL and not _VARIANT_PATTERN.match(name):
            raise ConfigError(
                f"--variants: unknown variant {name!r} (use orig, train8, tta18, or"
                " names like 0_0.5_1 = row position, column position, flip)"
            )
    if not names:
        raise ConfigError("--variants: empty list")
    return names


def variant_size(height: int, width: int, name: str) -> tuple[int, int]:
    """Output (height, width) of a variant: crops are round(0.875*h) x round(0.875*w)."""
    if name == ORIGINAL:
        return height, width
    return round(CROP_FRACTION * height), round(CROP_FRACTION * width)


def apply_variant(pixels: np.ndarray, name: str) -> np.ndarray:
    """Crop and/or flip an HxWxC image.

    Position 0 is top/left, 1 bottom/right, 0.5 centred (offset = floor(p * slack + 0.5));
    the horizontal flip is applied after the crop.
    """
    if name == ORIGINAL:
        return pixels
    match = _VARIANT_PATTERN.match(name)
    if match is None:
        raise ConfigError(f"unknown variant {name!r}")
    row_position, column_position, flip = (
        float(match.group(1)),
        float(match.group(2)),
        int(match.group(3)),
    )
    height, width = pixels.shape[:2]
    crop_height, crop_width = variant_size(height, width, name)
    top = int(np.floor(row_position * (height - crop_height) + 0.5))
    left = int(np.floor(column_position * (width - crop_width) + 0.5))
    crop = pixels[top : top + crop_height, left : left + crop_width]
    return crop[:, ::-1] if flip else crop


def stack_variants(pixels: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """All variants of one image as a batch [V, h, w, C]; they must share one size."""
    outputs = [apply_variant(pixels, name) for name in names]
    sizes = {output.shape for output in outputs}
    if len(sizes) != 1:
        raise ConfigError(
            f"variants {list(names)} give different sizes {sorted(sizes)}; "
            "mix 'orig' with crops in separate views"
        )
    return np.ascontiguousarray(np.stack(outputs))
