"""Read and decode one image into an RGB uint8 array, turning every failure into a row status."""

from __future__ import annotations

import hashlib
import io
import time
import warnings
from dataclasses import dataclass

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
    """

    pixels: np.ndarray | None
    status: RowStatus
    error: str | None
    read_ms: float
    decode_ms: float


def read_bytes(uri: str) -> bytes:
    """Read a local path or any fsspec URL completely.

    Raises:
        FileNotFoundError: the file does not exist.
        OSError: any other I/O failure.
    """
    with fsspec.open(uri, "rb") as handle:
        return handle.read()  # type: ignore[no-any-return]


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
                opened.load()
                image = ImageOps.exif_transpose(opened) or opened
                image = _resize_to_policy(image.convert("RGB"), policy)
                pixels = np.asarray(image, dtype=np.uint8)
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
    return DecodedImage(pixels, status, decode_error, read_ms, _ms(started))


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
