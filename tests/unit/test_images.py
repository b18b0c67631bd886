"""Image decoding: each bad file becomes a status naming the file; good files decode right."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from features.extraction.images import decode_image_bytes, load_image
from pipelines.sample import broken_files
from schemas.status import RowStatus
from schemas.view_spec import InputPolicy

POLICY = InputPolicy()


def _jpeg(pixels: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("900001.jpg", RowStatus.ZERO_BYTES),
        ("900002.jpg", RowStatus.TRUNCATED),
        ("900003.jpg", RowStatus.DECODE_ERROR),
        ("900004.jpg", RowStatus.TOO_SMALL),
        ("900005.png", RowStatus.DECOMPRESSION_BOMB),
    ],
)
def test_broken_files_get_their_status(name, status) -> None:
    pixels, got, error = decode_image_bytes(broken_files(0)[name], name, POLICY)
    assert pixels is None and got is status
    assert error is not None and error.startswith(name)


def test_missing_and_checksum_mismatch(tmp_path) -> None:
    missing = load_image(str(tmp_path / "nope.jpg"), POLICY)
    assert missing.status is RowStatus.MISSING and "nope.jpg" in (missing.error or "")
    path = tmp_path / "a.jpg"
    path.write_bytes(_jpeg(np.zeros((80, 90, 3), np.uint8)))
    mismatch = load_image(str(path), POLICY, expected_sha256="0" * 64)
    assert mismatch.status is RowStatus.CHECKSUM_MISMATCH
    good = load_image(
        str(path), POLICY, expected_sha256=hashlib.sha256(path.read_bytes()).hexdigest()
    )
    assert (
        good.status is RowStatus.OK and good.pixels is not None and good.pixels.shape == (80, 90, 3)
    )


def test_exif_orientation_is_applied() -> None:
    rng = np.random.default_rng(0)
    upright = (rng.integers(0, 4, (90, 120, 1)) * 60).repeat(3, axis=2).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated; viewers rotate 90 degrees clockwise
    stored = np.ascontiguousarray(np.rot90(upright, k=1))
    pixels, status, _ = decode_image_bytes(_jpeg(stored, exif=exif), "x.jpg", POLICY)
    assert status is RowStatus.OK and pixels is not None
    assert pixels.shape == upright.shape
    assert np.abs(pixels.astype(int) - upright.astype(int)).mean() < 8  # JPEG loss only


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P", "LA"])
def test_other_modes_become_rgb(mode) -> None:
    image = Image.fromarray(np.full((80, 100, 3), 120, np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG" if mode != "CMYK" else "JPEG")
    pixels, status, _ = decode_image_bytes(buffer.getvalue(), "m", POLICY)
    assert status is RowStatus.OK and pixels is not None
    assert pixels.shape == (80, 100, 3) and pixels.dtype == np.uint8


def test_max_side_policy_downscales_longest_side() -> None:
    data = _jpeg(np.zeros((300, 600, 3), np.uint8))
    pixels, status, _ = decode_image_bytes(data, "big", InputPolicy("max_side", 200))
    assert status is RowStatus.OK and pixels is not None and pixels.shape == (100, 200, 3)
