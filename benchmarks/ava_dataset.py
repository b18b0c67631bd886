"""An AVA-shaped dataset on disk: N small JPEGs, AVA.txt votes (a few malformed lines), split lists."""

from __future__ import annotations

import io
import logging
import multiprocessing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from features import files
from pipelines.sample_images import votes_for

LOGGER = logging.getLogger(__name__)
CHUNK = 4096  # images one generating process writes per task
# AVA's most common shapes (500x333, 333x500, 500x375, ...) scaled to a 64-pixel long side:
# sizes vary as AVA's do (a few shapes hold most images, so the extractor batches them as it
# would batch AVA), small enough that the chain's own costs, not the model's, dominate.
SIZES = ((43, 64), (64, 43), (48, 64), (64, 48), (51, 64), (64, 64))
TEST_SHARE = 0.08  # AVA's generic_test.jpgl holds about 8 % of the ids
# Lines an AVA.txt written by a broken tool could hold; labels drops each, naming the line.
MALFORMED_LINES = (
    "{index} {image_id} 1 2 3 4 5 6 7 8 9 0 0",  # 13 fields, not 15
    "{index} {image_id} 1 2 x 4 5 6 7 8 9 10 0 0 1",  # a non-numeric count
    "{index} {image_id} 1 2 3 -4 5 6 7 8 9 10 0 0 1",  # a negative count
)


@dataclass(frozen=True)
class AvaDataset:
    """Paths of a generated dataset."""

    images: Path  # folder of <image_id>.jpg
    raw: Path  # AVA.txt, generic_test.jpgl, generic_ls_train.jpgl
    image_ids: tuple[str, ...]
    malformed: int  # malformed AVA.txt lines (their ids are left out of the label table)


def ava_ids(count: int, seed: int) -> list[str]:
    """Distinct AVA-style ids (integers below 1,000,000, as AVA's are), sorted."""
    if count > 999_999:
        raise ValueError(f"at most 999,999 AVA-style ids, not {count}")
    rng = np.random.default_rng(seed)
    return [str(value) for value in np.sort(rng.choice(999_999, count, replace=False) + 1)]


def _write_chunk(task: tuple[Path, list[str], int]) -> int:
    """Write one chunk's JPEGs (a smooth gradient plus noise, each of one of SIZES)."""
    folder, image_ids, seed = task
    rng = np.random.default_rng(seed)
    for image_id in image_ids:
        height, width = SIZES[int(rng.integers(len(SIZES)))]
        rows = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
        columns = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
        colour = rng.random(3, dtype=np.float32)[None, None, :]
        noise = rng.normal(0, 0.08, (height, width, 3)).astype(np.float32)
        pixels = np.clip((rows * colour + columns * (1 - colour) + noise) * 255, 0, 255)
        buffer = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="JPEG", quality=85)
        (folder / f"{image_id}.jpg").write_bytes(buffer.getvalue())
    return len(image_ids)


def _write_images(folder: Path, image_ids: list[str], seed: int, processes: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tasks = [
        (folder, image_ids[start : start + CHUNK], seed * 1_000_003 + start)
        for start in range(0, len(image_ids), CHUNK)
    ]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        for _ in pool.imap_unordered(_write_chunk, tasks):
            pass


def _votes_text(image_ids: list[str], seed: int, malformed: int) -> str:
    """AVA.txt: index, id, 10 vote counts, 2 tags, challenge; `malformed` lines spread out."""
    rng = np.random.default_rng(seed + 1)
    qualities = rng.normal(0, 0.6, len(image_ids))
    broken_at = set(np.linspace(0, len(image_ids) - 1, malformed, dtype=np.int64).tolist())
    lines: list[str] = []
    for position, (image_id, quality) in enumerate(zip(image_ids, qualities, strict=True)):
        index = position + 1
        if position in broken_at:
            template = MALFORMED_LINES[len(lines) % len(MALFORMED_LINES)]
            lines.append(template.format(index=index, image_id=image_id))
            continue
        votes = votes_for(float(quality), rng)
        tags = rng.integers(0, 60, 2)
        lines.append(
            f"{index} {image_id} {' '.join(map(str, votes))} {tags[0]} {tags[1]} "
            f"{int(rng.integers(1, 1400))}"
        )
    return "\n".join(lines) + "\n"


def write_ava_dataset(
    root: Path, count: int, seed: int = 0, malformed: int = 3, processes: int = 2
) -> AvaDataset:
    """Write images/ and raw/ (AVA.txt and the two official split lists) under root.

    Args:
        root: output folder (created).
        count: images (each with a line in AVA.txt).
        seed: everything generated follows from it.
        malformed: AVA.txt lines written malformed (spread over the file).
        processes: JPEG-writing processes.

    Returns:
        The dataset's paths and ids.
    """
    image_ids = ava_ids(count, seed)
    _write_images(root / "images", image_ids, seed, processes)
    raw = root / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    files.atomic_write_text(str(raw / "AVA.txt"), _votes_text(image_ids, seed, malformed))
    order = np.random.default_rng(seed + 2).permutation(len(image_ids))
    cut = max(1, round(TEST_SHARE * len(image_ids)))
    test = sorted(image_ids[i] for i in order[:cut])
    train = sorted(image_ids[i] for i in order[cut:])
    files.atomic_write_text(str(raw / "generic_test.jpgl"), "".join(f"{i}\n" for i in test))
    files.atomic_write_text(str(raw / "generic_ls_train.jpgl"), "".join(f"{i}\n" for i in train))
    LOGGER.info("wrote %d images, AVA.txt (%d malformed lines) under %s", count, malformed, root)
    return AvaDataset(root / "images", raw, tuple(image_ids), malformed)
