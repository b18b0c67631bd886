"""Image decoding: each bad file becomes a status naming the file; good files decode right."""

from __future__ import annotations

import hashlib
import io
from unittest import mock

import numpy as np
import pytest
from PIL import Image, ImageOps

from features.extraction import images as images_module
from features.extraction.images import (
    decode_image_bytes,
    load_image,
    read_bytes,
    rgb_pixels,
    to_rgb,
)
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


def _encoded(mode: str, orientation: int | None, fmt: str) -> bytes:
    rng = np.random.default_rng(7)
    base = Image.fromarray(rng.integers(0, 256, (80, 100, 3), dtype=np.uint8))
    image = base.convert("L").convert("I;16") if mode == "I;16" else base.convert(mode)
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, exif=exif.tobytes())
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", [None, 1, 3, 6, 8, 9])
@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("RGB", "JPEG"),
        ("L", "JPEG"),
        ("CMYK", "JPEG"),
        ("RGB", "PNG"),
        ("P", "PNG"),
        ("RGBA", "PNG"),
        ("LA", "PNG"),
        ("I;16", "PNG"),
    ],
)
def test_pixels_equal_exif_transpose_then_to_rgb(mode, fmt, orientation) -> None:
    # The fast path (no copy without an orientation tag, none for RGB) against the plain rule.
    data = _encoded(mode, orientation, fmt)
    with Image.open(io.BytesIO(data)) as opened:
        expected = np.asarray(to_rgb(ImageOps.exif_transpose(opened)))
        assert opened.mode == mode
    pixels, status, _ = decode_image_bytes(data, "m", POLICY)
    assert status is RowStatus.OK and pixels is not None
    assert pixels.dtype == np.uint8 and np.array_equal(pixels, expected)
    if orientation in (6, 8):
        assert pixels.shape[:2] == (100, 80)


def test_local_path_and_file_url_read_the_same(tmp_path) -> None:
    data = _jpeg(np.full((80, 90, 3), 90, np.uint8))
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    plain = load_image(str(path), POLICY, digest)
    url = load_image(path.as_uri(), POLICY, digest)
    assert plain.status is url.status is RowStatus.OK
    assert np.array_equal(plain.pixels, url.pixels)
    assert read_bytes(str(path)) == read_bytes(path.as_uri()) == data
    with pytest.raises(FileNotFoundError):
        read_bytes(str(tmp_path / "missing.jpg"))
    assert load_image(str(tmp_path), POLICY).status is RowStatus.READ_ERROR


@pytest.mark.parametrize("size", [(1, 1), (3, 7), (375, 500), (4000, 33)])
def test_rgb_pixels_equal_numpy_asarray(size) -> None:
    height, width = size
    rng = np.random.default_rng(height)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    pixels = rgb_pixels(image)
    assert pixels.shape == (height, width, 3) and pixels.dtype == np.uint8
    assert np.array_equal(pixels, np.asarray(image))
    gray = image.convert("L")
    assert np.array_equal(rgb_pixels(gray), np.asarray(gray))  # other modes: np.asarray


def test_rgb_pixels_takes_the_one_copy_path_on_this_pillow(monkeypatch) -> None:
    # A Pillow whose internal encoder changed would silently fall back to np.asarray.
    image = Image.fromarray(np.full((20, 30, 3), 5, np.uint8))
    monkeypatch.setattr(images_module.np, "asarray", mock.Mock(side_effect=AssertionError))
    assert rgb_pixels(image).shape == (20, 30, 3)


def test_bomb_between_one_and_two_times_the_limit_without_the_warning_filter(monkeypatch) -> None:
    # Another decode thread's catch_warnings exit can drop the "error" filter (not thread-safe).
    monkeypatch.setattr(images_module.warnings, "simplefilter", mock.Mock())
    data = _jpeg(np.zeros((100, 150, 3), np.uint8))
    with pytest.warns(Image.DecompressionBombWarning):  # the filter really is gone
        pixels, status, error = decode_image_bytes(data, "b.jpg", POLICY, max_pixels=10_000)
    assert pixels is None and status is RowStatus.DECOMPRESSION_BOMB
    assert error is not None and "15000 pixels" in error
    pixels, status, _ = decode_image_bytes(data, "b.jpg", POLICY, max_pixels=15_000)
    assert status is RowStatus.OK
