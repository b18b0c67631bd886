"""Independent reference computations used by the tests (numpy, no project code)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps


def area_weights(input_size: int, output_size: int) -> np.ndarray:
    """[output, input] matrix of box-filter overlaps: output cell o averages input span
    [o * s, (o + 1) * s) with s = input / output, each input pixel weighted by its overlap."""
    scale = input_size / output_size
    weights = np.zeros((output_size, input_size), dtype=np.float64)
    for out in range(output_size):
        start, stop = out * scale, (out + 1) * scale
        for pixel in range(int(np.floor(start)), int(np.ceil(stop))):
            overlap = min(stop, pixel + 1) - max(start, pixel)
            if overlap > 0:
                weights[out, pixel] = overlap / scale
    return weights


def area_resize(tap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area resize of one [H, W, C] map to [rows, cols, C] via separable overlap weights."""
    rows = area_weights(tap.shape[0], size[0])
    cols = area_weights(tap.shape[1], size[1])
    return np.einsum("oh,hwc,pw->opc", rows, tap.astype(np.float64), cols)


def reference_pool(taps: list[np.ndarray], kind: str, grid: tuple[int, int] = (5, 5)) -> np.ndarray:
    """MLSP pooling of raw [H, W, C] taps: concatenated GAP, or concatenated area grids."""
    if kind == "gap":
        return np.concatenate([tap.astype(np.float64).mean(axis=(0, 1)) for tap in taps])
    return np.concatenate([area_resize(tap, grid) for tap in taps], axis=-1)


def decode_reference(path: str) -> np.ndarray:
    """Decode like keras' load_img plus EXIF orientation: RGB uint8."""
    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"), dtype=np.uint8)


def spp_bin_edges(side: int, bins: int) -> list[tuple[int, int]]:
    """[start, stop) of each adaptive bin: floor(i * side / bins) to ceil((i + 1) * side / bins)."""
    from fractions import Fraction
    from math import ceil, floor

    return [
        (floor(Fraction(i * side, bins)), ceil(Fraction((i + 1) * side, bins))) for i in range(bins)
    ]


def reference_spp(taps: list[np.ndarray], levels: tuple[int, ...]) -> np.ndarray:
    """Spatial pyramid max pooling of raw [H, W, C] taps: per tap, per level, n x n bins
    row-major with channels inner, flattened; taps concatenated."""
    parts = []
    for tap in taps:
        for n in levels:
            rows, cols = spp_bin_edges(tap.shape[0], n), spp_bin_edges(tap.shape[1], n)
            grid = np.array(
                [[tap[r0:r1, c0:c1].max(axis=(0, 1)) for c0, c1 in cols] for r0, r1 in rows]
            )
            parts.append(grid.reshape(-1))
    return np.concatenate(parts)
