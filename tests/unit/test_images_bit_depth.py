"""High bit-depth and alpha images decode to the documented 8-bit RGB, never silently clipped."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from features.extraction.images import UnsupportedModeError, decode_image_bytes, to_rgb
from schemas.status import RowStatus
from schemas.view_spec import InputPolicy
from tests.helpers.high_depth import pillow_bytes, png16, tiff48

POLICY = InputPolicy()
RNG = np.random.default_rng(14)
GRAY8 = RNG.integers(0, 256, (80, 96), dtype=np.uint16)  # the 8-bit picture
RGB8 = RNG.integers(0, 256, (80, 96, 3), dtype=np.uint16)
WIDE16 = RNG.integers(0, 65536, (80, 96), dtype=np.uint16)  # arbitrary 16-bit values


def _decode(data: bytes) -> np.ndarray:
    pixels, status, error = decode_image_bytes(data, "image", POLICY)
    assert status is RowStatus.OK, error
    assert pixels is not None and pixels.dtype == np.uint8
    return pixels


def _gray_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray.astype(np.uint8)[:, :, np.newaxis], 3, axis=2)


def _gray16_files(samples: np.ndarray) -> dict[str, bytes]:
    """The same 16-bit gray samples in every container and mode Pillow hands us."""
    big_endian = Image.frombytes("I;16B", (96, 80), samples.astype(">u2").tobytes())
    return {
        "I;16 PNG": png16(samples),
        "I;16 TIFF": pillow_bytes(Image.fromarray(samples), "TIFF"),
        "I;16B TIFF": pillow_bytes(big_endian, "TIFF"),
        "I TIFF": pillow_bytes(Image.fromarray(samples.astype(np.int32)), "TIFF"),
        "I PGM": b"P5\n96 80\n65535\n" + samples.astype(">u2").tobytes(),
    }


def test_the_test_files_reach_the_modes_they_name() -> None:
    for label, data in _gray16_files(WIDE16).items():
        assert Image.open(io.BytesIO(data)).mode == label.split()[0], label


@pytest.mark.parametrize("label", sorted(_gray16_files(GRAY8)))
def test_16_bit_gray_equals_its_8_bit_twin_exactly(label) -> None:
    eight_bit = _decode(pillow_bytes(Image.fromarray(GRAY8.astype(np.uint8)), "PNG"))
    sixteen_bit = _decode(_gray16_files(GRAY8 * 257)[label])
    np.testing.assert_array_equal(sixteen_bit, eight_bit)


@pytest.mark.parametrize("label", sorted(_gray16_files(WIDE16)))
def test_16_bit_gray_scales_by_257_rounded(label) -> None:
    # 257 is odd, so no 16-bit value lies exactly halfway: rint is the documented rounding.
    expected = _gray_rgb(np.rint(WIDE16 / 257.0))
    np.testing.assert_array_equal(_decode(_gray16_files(WIDE16)[label]), expected)


def test_16_bit_values_are_no_longer_clipped_to_white() -> None:
    pixels = _decode(png16(WIDE16))
    clipped = np.minimum(WIDE16, 255)  # what convert("RGB") used to produce
    assert (clipped == 255).mean() > 0.9
    assert (pixels[:, :, 0] == 255).mean() < 0.01


@pytest.mark.parametrize(
    "data",
    [png16(RGB8 * 257), tiff48(RGB8 * 257, "<"), tiff48(RGB8 * 257, ">")],
    ids=["48-bit PNG", "48-bit TIFF LE", "48-bit TIFF BE"],
)
def test_48_bit_rgb_equals_its_8_bit_twin_exactly(data) -> None:
    np.testing.assert_array_equal(_decode(data), RGB8.astype(np.uint8))


def test_48_bit_rgb_keeps_the_high_byte_of_arbitrary_values() -> None:
    samples = RNG.integers(0, 65536, (80, 96, 3), dtype=np.uint16)
    expected = (samples >> 8).astype(np.uint8)  # Pillow's documented 48-bit reduction
    np.testing.assert_array_equal(_decode(png16(samples)), expected)
    np.testing.assert_array_equal(_decode(tiff48(samples)), expected)
    assert np.abs(expected.astype(int) - np.rint(samples / 257.0)).max() <= 1


def test_64_bit_rgba_drops_alpha() -> None:
    alpha = RNG.integers(0, 65536, (80, 96, 1), dtype=np.uint16)
    data = png16(np.concatenate([RGB8 * 257, alpha], axis=2))
    np.testing.assert_array_equal(_decode(data), RGB8.astype(np.uint8))


@pytest.mark.parametrize(
    ("values", "scale"), [(GRAY8 / 255.0, 255.0), (GRAY8.astype(np.float64), 1.0)]
)
def test_float_images_use_the_documented_range(values, scale) -> None:
    data = pillow_bytes(Image.fromarray(values.astype(np.float32)), "TIFF")
    expected = _gray_rgb(np.floor(values.astype(np.float32).astype(np.float64) * scale + 0.5))
    np.testing.assert_array_equal(_decode(data), expected)
    np.testing.assert_array_equal(_decode(data), _gray_rgb(GRAY8))


@pytest.mark.parametrize(
    ("image", "mode"),
    [
        (Image.fromarray(np.full((80, 96), 70_000, np.int32)), "'I'"),
        (Image.fromarray(np.full((80, 96), -1, np.int32)), "'I'"),
        (Image.fromarray(np.full((80, 96), np.nan, np.float32)), "'F'"),
        (Image.fromarray(np.full((80, 96), 300.0, np.float32)), "'F'"),
    ],
    ids=["I-above-16-bit", "I-negative", "F-nan", "F-above-255"],
)
def test_values_without_a_known_scale_are_a_decode_error_naming_the_mode(image, mode) -> None:
    pixels, status, error = decode_image_bytes(pillow_bytes(image, "TIFF"), "odd.tif", POLICY)
    assert pixels is None and status is RowStatus.DECODE_ERROR
    assert error is not None and error.startswith("odd.tif: decode_error") and mode in error


def test_a_mode_without_conversion_is_refused_by_name() -> None:
    with pytest.raises(UnsupportedModeError, match="'La'"):
        to_rgb(Image.new("La", (4, 4)))


def test_palette_transparency_and_la_drop_alpha() -> None:
    palette = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
    indexes = RNG.integers(0, 256, (80, 96), dtype=np.uint8)
    image = Image.fromarray(indexes, mode="P")
    image.putpalette(palette.tobytes())
    image.info["transparency"] = int(indexes[0, 0])
    data = pillow_bytes(image, "PNG")
    assert "transparency" in Image.open(io.BytesIO(data)).info
    np.testing.assert_array_equal(_decode(data), palette[indexes])

    alpha = RNG.integers(0, 256, (80, 96), dtype=np.uint8)
    la = Image.merge("LA", [Image.fromarray(GRAY8.astype(np.uint8)), Image.fromarray(alpha)])
    np.testing.assert_array_equal(_decode(pillow_bytes(la, "PNG")), _gray_rgb(GRAY8))
