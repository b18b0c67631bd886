"""Read and decode one image into an RGB uint8 array, turning every failure into a row status."""

from __future__ import annotations

import hashlib
import io
import time
import warnings
from dataclasses import dataclass, replace

import fsspec
import numpy as np
from PIL import Image, ImageOps

from schemas.status import RowStatus
from schemas.view_spec import InputPolicy

# Pillow's own default: images above this many pixels are treated as decompression bombs.
DEFAULT_MAX_PIXELS = 89_478_485


@dataclass(frozen=True)
class DecodedImage:
    """Outcome of reading and decoding one image.

    Attributes:
        pixels: HxWx3 uint8 RGB array, or None when status is not OK.
        status: row status.
        error: human-readable reason naming the file, or None.
        read_ms / decode_ms: wall time of the two steps.
        size: (height, width) of the decoded pixels; kept by released().
    """

    pixels: np.ndarray | None
    status: RowStatus
    error: str | None
    read_ms: float
    decode_ms: float
    size: tuple[int, int] | None = None

    def released(self) -> DecodedImage:
        """The same outcome without its pixels (once they are copied into a batch), so a
        shard holds decoded pixels only for the batches in flight, not for all its rows."""
        return replace(self, pixels=None)


def read_bytes(uri: str) -> bytes:
    """Read a local path or any fsspec URL completely.

    Raises:
        FileNotFoundError: the file does not exist.
        OSError: any other I/O failure.
    """
    if _is_plain_local_path(uri):
        # Plain open(): fsspec's URL parsing and file wrapper cost about as much CPU as
        # reading an AVA-sized JPEG (benchmarks.gpu_feed); unbuffered reads straight into bytes.
        with open(uri, "rb", buffering=0) as handle:
            return handle.read()
    with fsspec.open(uri, "rb") as handle:
        return handle.read()  # type: ignore[no-any-return]


def _is_plain_local_path(uri: str) -> bool:
    """A path open() reads as fsspec would: no protocol, no chaining, no home directory."""
    return "://" not in uri and "::" not in uri and not uri.startswith("~")


def _classify_decode_error(error: Exception) -> RowStatus:
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return RowStatus.DECOMPRESSION_BOMB
    text = str(error).lower()
    if "truncated" in text or "premature end" in text or isinstance(error, EOFError):
        return RowStatus.TRUNCATED
    return RowStatus.DECODE_ERROR


def _resize_to_policy(image: Image.Image, policy: InputPolicy) -> Image.Image:
    if policy.kind == "max_side" and policy.max_side is not None:
        longest = max(image.size)
        if longest > policy.max_side:
            scale = policy.max_side / longest
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            return image.resize(size, Image.Resampling.LANCZOS)
    return image


# 8-bit modes Pillow converts to RGB itself. Alpha (RGBA, LA, PA, P with a transparent index)
# is dropped, keeping the colour stored under transparent pixels, as keras' load_img does
# (the preprocessing of ava-mlsp). 16-bit-per-channel RGB(A) PNG and TIFF arrive here as
# RGB(A): Pillow keeps the high byte of each sample, floor(x / 256).
_PILLOW_RGB_MODES = frozenset(
    {"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "RGBA", "RGBa", "LA", "PA"}
)
SIXTEEN_BIT_MAX = 65535


class UnsupportedModeError(ValueError):
    """An image mode (or value range) without a faithful conversion to 8-bit RGB."""


def sixteen_to_eight_bits(values: np.ndarray) -> np.ndarray:
    """16-bit samples to 8 bits by their real range: round(x / 257), halves rounded up.

    x / 257 maps 0..65535 onto 0..255 exactly, so an 8-bit image widened by x257 comes back
    unchanged.
    """
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _gray32(values: np.ndarray) -> np.ndarray:
    """Mode I (32-bit int): values within 0..65535 are 16-bit samples (Pillow also stores
    16-bit PGM and rescaled 9-15-bit PGM this way); any other range has no known scale."""
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > SIXTEEN_BIT_MAX:
        raise UnsupportedModeError(
            f"image mode 'I' with values {low}..{high} outside 0..{SIXTEEN_BIT_MAX}: "
            "no known 8-bit scale"
        )
    return sixteen_to_eight_bits(values)


def _gray_float(values: np.ndarray) -> np.ndarray:
    """Mode F (32-bit float): values within [0, 1] are scaled by 255, values within [0, 255]
    are taken as 8-bit levels; rounded halves up. NaN, infinities, negatives or values above
    255 have no known scale."""
    low, high = float(values.min()), float(values.max())
    if not (np.isfinite(low) and np.isfinite(high)) or low < 0.0 or high > 255.0:
        raise UnsupportedModeError(
            f"image mode 'F' with values {low:g}..{high:g} outside [0, 1] or [0, 255]: "
            "no known 8-bit scale"
        )
    scale = 255.0 if high <= 1.0 else 1.0
    return np.floor(values.astype(np.float64) * scale + 0.5).astype(np.uint8)


# High bit-depth single-channel modes, scaled to 8 bits by their real range (never clipped).
_HIGH_DEPTH_GRAY = {
    "I;16": sixteen_to_eight_bits,
    "I;16L": sixteen_to_eight_bits,
    "I;16B": sixteen_to_eight_bits,
    "I;16N": sixteen_to_eight_bits,
    "I": _gray32,
    "F": _gray_float,
}


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a decoded image to 8-bit RGB by the documented rule of its mode.

    Raises:
        UnsupportedModeError: a mode or value range without a faithful conversion.
    """
    if image.mode in _HIGH_DEPTH_GRAY:
        gray = _HIGH_DEPTH_GRAY[image.mode](np.asarray(image))
        return Image.fromarray(np.repeat(gray[:, :, np.newaxis], 3, axis=2))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # the palette's transparency, then dropped like alpha
    if image.mode not in _PILLOW_RGB_MODES:
        raise UnsupportedModeError(
            f"image mode {image.mode!r} has no faithful 8-bit RGB conversion"
        )
    return image.convert("RGB")


# EXIF Orientation values that ImageOps.exif_transpose acts on (1 and others: as stored).
_EXIF_ORIENTATION_TAG = 0x0112
_TRANSPOSED_ORIENTATIONS = frozenset(range(2, 9))


def _exif_oriented(image: Image.Image) -> Image.Image:
    """The image as EXIF orientation says; without a transposing tag, the image itself
    (exif_transpose would return a pixel-identical copy, a full-image memcpy)."""
    if image.getexif().get(_EXIF_ORIENTATION_TAG, 1) in _TRANSPOSED_ORIENTATIONS:
        return ImageOps.exif_transpose(image)
    return image


def _rgb(image: Image.Image) -> Image.Image:
    """to_rgb, minus the copy convert("RGB") makes of an image that is already 8-bit RGB."""
    return image if image.mode == "RGB" else to_rgb(image)


def rgb_pixels(image: Image.Image) -> np.ndarray:
    """HxWx3 uint8 array of an RGB image: the same bytes as np.asarray(image), one copy fewer.

    np.asarray goes through Image.tobytes, which packs the pixels in 64 KiB pieces and then
    joins them (two copies; about 0.5 ms of CPU per AVA-sized image, a fifth of its decode).
    Here the same raw packer runs once over the whole image. Pillow's encoder interface is
    internal, so anything unexpected falls back to np.asarray.
    """
    image.load()
    size = image.width * image.height * 3
    if image.mode != "RGB" or size == 0:
        return np.asarray(image, dtype=np.uint8)
    try:
        encoder = Image._getencoder("RGB", "raw", "RGB")
        encoder.setimage(image.im, (0, 0, *image.size))
        _, status, data = encoder.encode(size)
    except (AttributeError, TypeError, ValueError):
        return np.asarray(image, dtype=np.uint8)
    if status != 1 or len(data) != size:  # 1: the packer finished in this one call
        return np.asarray(image, dtype=np.uint8)
    return np.frombuffer(data, np.uint8).reshape(image.height, image.width, 3)


def _refuse_bomb(image: Image.Image, max_pixels: int) -> None:
    """Refuse more than max_pixels from the header, before decoding.

    The warnings filter above is process-global and catch_warnings is not thread-safe: with
    several decode threads one thread's exit can drop another's filter, and an image between
    1x and 2x the limit would then only warn. This check does not depend on that state.
    """
    pixels = image.width * image.height
    if pixels > max_pixels:
        raise Image.DecompressionBombError(
            f"Image size ({pixels} pixels) exceeds limit of {max_pixels} pixels, "
            "could be decompression bomb DOS attack."
        )


def decode_image_bytes(
    data: bytes, name: str, policy: InputPolicy, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray | None, RowStatus, str | None]:
    """Decode encoded bytes into an RGB array, applying EXIF orientation and the input policy.

    Args:
        data: encoded file contents.
        name: file name or URI used in error messages.
        policy: input sizing policy (minimum side, optional max side).
        max_pixels: images with more pixels are refused as decompression bombs.

    Returns:
        (pixels or None, status, error message or None).
    """
    if not data:
        return None, RowStatus.ZERO_BYTES, f"{name}: file is empty (0 bytes)"
    previous_limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = max_pixels
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x the limit; a bomb is a bomb at any excess.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:
                _refuse_bomb(opened, max_pixels)
                opened.load()
                image = _resize_to_policy(_rgb(_exif_oriented(opened)), policy)
                pixels = rgb_pixels(image)
    except Image.UnidentifiedImageError:
        return None, RowStatus.DECODE_ERROR, f"{name}: decode_error: not a recognised image format"
    except Exception as error:  # Pillow raises many unrelated types for bad files
        status = _classify_decode_error(error)
        return None, status, f"{name}: {status.value}: {type(error).__name__}: {error}"
    finally:
        Image.MAX_IMAGE_PIXELS = previous_limit
    height, width = pixels.shape[:2]
    if min(height, width) < policy.min_side:
        message = (
            f"{name}: {width}x{height} px is smaller than the network minimum {policy.min_side} px"
        )
        return None, RowStatus.TOO_SMALL, message
    return pixels, RowStatus.OK, None


def load_image(
    uri: str,
    policy: InputPolicy,
    expected_sha256: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DecodedImage:
    """Read and decode one image, never raising for a bad file.

    Args:
        uri: local path or fsspec URL.
        policy: input sizing policy.
        expected_sha256: the manifest's digest; a mismatch gives CHECKSUM_MISMATCH.
        max_pixels: decompression-bomb limit.

    Returns:
        A DecodedImage whose status says what happened.
    """
    started = time.perf_counter()
    try:
        data = read_bytes(uri)
    except FileNotFoundError:
        return DecodedImage(None, RowStatus.MISSING, f"{uri}: file not found", _ms(started), 0.0)
    except OSError as error:
        return DecodedImage(None, RowStatus.READ_ERROR, f"{uri}: {error}", _ms(started), 0.0)
    read_ms = _ms(started)
    if expected_sha256 and data and hashlib.sha256(data).hexdigest() != expected_sha256:
        message = f"{uri}: content sha256 differs from the manifest (file changed after indexing)"
        return DecodedImage(None, RowStatus.CHECKSUM_MISMATCH, message, read_ms, 0.0)
    started = time.perf_counter()
    pixels, status, decode_error = decode_image_bytes(data, uri, policy, max_pixels)
    size = None if pixels is None else (int(pixels.shape[0]), int(pixels.shape[1]))
    return DecodedImage(pixels, status, decode_error, read_ms, _ms(started), size)


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
