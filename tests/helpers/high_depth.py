"""Encoders for high bit-depth test images that Pillow cannot write (48/64-bit PNG, 48-bit TIFF)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

# PNG colour types by channel count: gray, gray+alpha, RGB, RGBA.
_PNG_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}


def png16(samples: np.ndarray) -> bytes:
    """A 16-bit-per-sample PNG (HxW gray or HxWxC, C in 1..4), unfiltered, one IDAT chunk."""
    array = samples if samples.ndim == 3 else samples[:, :, np.newaxis]
    height, width, channels = array.shape
    rows = [b"\x00" + array[row].astype(">u2").tobytes() for row in range(height)]

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 16, _PNG_COLOUR_TYPES[channels], 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )


def tiff48(samples: np.ndarray, byte_order: str = "<") -> bytes:
    """An uncompressed 16-bit-per-sample RGB TIFF (HxWx3), little ('<') or big ('>') endian."""
    height, width, channels = samples.shape
    data = samples.astype(f"{byte_order}u2").tobytes()
    entry_count = 10
    ifd_offset = 8
    bits_offset = ifd_offset + 2 + entry_count * 12 + 4
    data_offset = bits_offset + 2 * channels

    def entry(tag: int, kind: int, count: int, value: bytes) -> bytes:
        return struct.pack(f"{byte_order}HHI", tag, kind, count) + value

    def short(value: int) -> bytes:
        return struct.pack(f"{byte_order}HH", value, 0)

    def long(value: int) -> bytes:
        return struct.pack(f"{byte_order}I", value)

    entries = [
        entry(256, 4, 1, long(width)),
        entry(257, 4, 1, long(height)),
        entry(258, 3, channels, long(bits_offset)),  # BitsPerSample: 16 per channel
        entry(259, 3, 1, short(1)),  # no compression
        entry(262, 3, 1, short(2)),  # RGB
        entry(273, 4, 1, long(data_offset)),
        entry(277, 3, 1, short(channels)),
        entry(278, 4, 1, long(height)),
        entry(279, 4, 1, long(len(data))),
        entry(284, 3, 1, short(1)),  # chunky
    ]
    magic = b"II*\x00" if byte_order == "<" else b"MM\x00*"
    ifd = struct.pack(f"{byte_order}H", entry_count) + b"".join(entries) + long(0)
    bits = struct.pack(f"{byte_order}{channels}H", *([16] * channels))
    return magic + long(ifd_offset) + ifd + bits + data


def pillow_bytes(image: Image.Image, image_format: str) -> bytes:
    """Encode a Pillow image in memory."""
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()
