"""Learnable sample images (JPEGs + AVA-format votes) and deliberately broken files."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

FIRST_IMAGE_ID = 100001
AVA_LABEL_FILE = "AVA.txt"


@dataclass(frozen=True)
class SampleImage:
    """One generated image and the latent properties its votes were drawn from."""

    image_id: str
    pixels: np.ndarray
    brightness: float
    colourfulness: float
    texture: float

    @property
    def quality(self) -> float:
        """Latent score in about [-1, 1]: bright, colourful, smooth images score high."""
        return (
            0.9 * (self.brightness - 0.5) * 2
            + 0.6 * (self.colourfulness - 0.5) * 2
            - 0.5 * (self.texture - 0.5) * 2
        )


def render_image(
    rng: np.random.Generator, height: int, width: int
) -> tuple[np.ndarray, float, float, float]:
    """One image and its latent (brightness, colourfulness, texture), each in [0, 1]."""
    brightness, colourfulness, texture = (
        rng.uniform(0.15, 0.85),
        rng.uniform(0.0, 1.0),
        rng.uniform(0.0, 1.0),
    )
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    hue = rng.uniform(0, 1, 3).astype(np.float32)
    gradient = (rows / height)[..., None] * hue + (cols / width)[..., None] * (1 - hue)
    base = brightness + colourfulness * 0.35 * (gradient - gradient.mean())
    grey = base.mean(axis=-1, keepdims=True)
    image = grey + colourfulness * (base - grey)
    for _ in range(int(rng.integers(1, 5))):  # a few discs, so images have objects and edges
        centre_r, centre_c, radius = (
            rng.uniform(0, height),
            rng.uniform(0, width),
            rng.uniform(0.08, 0.3) * min(height, width),
        )
        mask = ((rows - centre_r) ** 2 + (cols - centre_c) ** 2) < radius**2
        image[mask] = image[mask] * 0.6 + 0.4 * rng.uniform(0, 1, 3).astype(np.float32)
    image += texture * 0.25 * rng.standard_normal((height, width, 1)).astype(np.float32)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8), brightness, colourfulness, texture


def generate_images(n: int, seed: int, min_side: int, max_side: int) -> list[SampleImage]:
    """n images with varied sizes and orientations, all sides within [min_side, max_side]."""
    rng = np.random.default_rng(seed)
    images = []
    for index in range(n):
        long_side = int(rng.integers(max(min_side, int(max_side * 0.6)), max_side + 1))
        short_side = int(
            np.clip(round(long_side * rng.choice([0.75, 0.667, 1.0, 0.5625])), min_side, max_side)
        )
        height, width = (short_side, long_side) if rng.uniform() < 0.7 else (long_side, short_side)
        pixels, brightness, colourfulness, texture = render_image(rng, height, width)
        images.append(
            SampleImage(str(FIRST_IMAGE_ID + index), pixels, brightness, colourfulness, texture)
        )
    return images


def votes_for(quality: float, rng: np.random.Generator) -> np.ndarray:
    """AVA-style histogram of 1..10 votes centred on a mean opinion score derived from quality."""
    mean_score = float(np.clip(5.4 + 1.6 * quality, 1.5, 9.5))
    scores = np.clip(
        np.rint(rng.normal(mean_score, 1.3, int(rng.integers(80, 240)))), 1, 10
    ).astype(int)
    return np.bincount(scores, minlength=11)[1:]


def _save(image: SampleImage, path: Path, index: int) -> None:
    """Save as JPEG, with a few files exercising other modes and EXIF rotation."""
    picture = Image.fromarray(image.pixels)
    if index % 11 == 3:
        picture.convert("L").save(path, format="JPEG", quality=92)
    elif index % 11 == 5:
        picture.convert("CMYK").save(path, format="JPEG", quality=92)
    elif index % 11 == 7:
        # Stored sideways with an EXIF 'rotate 90 CW' tag: decoders must apply it.
        exif = Image.Exif()
        exif[0x0112] = 6
        picture.transpose(Image.Transpose.ROTATE_90).save(
            path, format="JPEG", quality=92, exif=exif
        )
    else:
        picture.save(path, format="JPEG", quality=92)


def broken_files(seed: int) -> dict[str, bytes]:
    """Deliberately bad files keyed by file name: each maps to one extraction status."""
    rng = np.random.default_rng(seed + 1)
    good, _, _, _ = render_image(rng, 120, 160)
    buffer = io.BytesIO()
    Image.fromarray(good).save(buffer, format="JPEG", quality=90)
    jpeg = buffer.getvalue()
    small = io.BytesIO()
    Image.fromarray(good[:60, :50]).save(small, format="JPEG")
    bomb = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(bomb, format="PNG")  # 144 Mpx that compress to KBs
    return {
        "900001.jpg": b"",  # zero_bytes
        "900002.jpg": jpeg[: len(jpeg) // 2],  # truncated
        "900003.jpg": b"this is not an image\n" * 20,  # decode_error
        "900004.jpg": small.getvalue(),  # too_small
        "900005.png": bomb.getvalue(),  # decompression_bomb
    }


def write_sample(
    out: Path, n: int, seed: int, broken: bool, min_side: int = 80, max_side: int = 320
) -> Path:
    """Write images/ and AVA.txt under out; returns the image folder."""
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 2)
    lines = []
    for index, image in enumerate(generate_images(n, seed, min_side, max_side)):
        _save(image, images_dir / f"{image.image_id}.jpg", index)
        votes = votes_for(image.quality, rng)
        tags = rng.integers(0, 60, 2)
        lines.append(
            [index + 1, image.image_id, *votes.tolist(), *tags.tolist(), int(rng.integers(1, 1400))]
        )
    if broken:
        for name, data in broken_files(seed).items():
            (images_dir / name).write_bytes(data)
            votes = votes_for(0.0, rng)
            lines.append([len(lines) + 1, Path(name).stem, *votes.tolist(), 0, 0, 1])
    (out / AVA_LABEL_FILE).write_text(
        "".join(" ".join(str(v) for v in line) + "\n" for line in lines)
    )
    return images_dir
