"""Sample releases in the official formats: SCUT-FBP5500 zip, AVA split lists, a rescaled copy."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from features import files
from pipelines.sample_images import generate_images

SCUT_SUBSETS = ("AF", "AM", "CF", "CM")
SCUT_ZIP_NAME = "SCUT-FBP5500_v2.zip"
SCUT_SPLIT_DIR = "train_test_files/split_of_60%training and 40%testing"
SCUT_FOLDS_DIR = "train_test_files/5_folders_cross_validations_files"
# The recalibration the shifted variant hides: reference = clip(k * shifted + b, 1, 5).
SHIFT_K, SHIFT_B, SHIFT_RANGE = 0.82, -0.04, (1.0, 5.0)


def scut_ratings(n_images: int, n_raters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(latent MOS per image in [1.5, 4.5], integer ratings 1..5 of shape images x raters)."""
    rng = np.random.default_rng(seed + 3)
    latent = rng.uniform(1.5, 4.5, n_images)
    ratings = np.clip(np.rint(latent[:, None] + rng.normal(0, 0.7, (n_images, n_raters))), 1, 5)
    return latent, ratings.astype(int)


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _ratings_xlsx(names: list[str], ratings: np.ndarray) -> bytes:
    from openpyxl import Workbook

    workbook = Workbook()
    sheet = workbook.active
    sheet.append(["Rater", "Filename", "Rating", "original Rating"])
    for rater in range(ratings.shape[1]):
        for index, name in enumerate(names):
            original = int(ratings[index, rater]) if (index + rater) % 17 == 0 else None
            sheet.append([rater + 1, name, int(ratings[index, rater]), original])
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


def _score_lines(names: list[str], scores: dict[str, float]) -> str:
    return "".join(f"{name} {scores[name]:.6f}\n" for name in names)


def scut_members(n_per_subset: int, n_raters: int, seed: int, side: int) -> dict[str, bytes]:
    """Archive member name -> bytes of a tiny SCUT-FBP5500 release (images, ratings, splits)."""
    names = [f"{subset}{index}.jpg" for subset in SCUT_SUBSETS
             for index in range(1, n_per_subset + 1)]
    _, ratings = scut_ratings(len(names), n_raters, seed)
    members = {f"Images/{name}": _jpeg(image.pixels) for name, image in
               zip(names, generate_images(len(names), seed, side, side), strict=True)}
    members["All_Ratings.xlsx"] = _ratings_xlsx(names, ratings)
    scores = {name: float(ratings[i].mean()) for i, name in enumerate(names)}
    members["train_test_files/All_labels.txt"] = _score_lines(names, scores).encode()
    order = list(np.random.default_rng(seed + 4).permutation(names))
    cut = round(0.6 * len(order))
    members[f"{SCUT_SPLIT_DIR}/train.txt"] = _score_lines(order[:cut], scores).encode()
    members[f"{SCUT_SPLIT_DIR}/test.txt"] = _score_lines(order[cut:], scores).encode()
    for fold in range(1, 6):
        test = set(order[fold - 1::5])
        train = [name for name in order if name not in test]
        folder = f"{SCUT_FOLDS_DIR}/cross_validation_{fold}"
        members[f"{folder}/train_{fold}.txt"] = _score_lines(train, scores).encode()
        members[f"{folder}/test_{fold}.txt"] = _score_lines(sorted(test), scores).encode()
    return members


def write_scut_zip(out: Path, n_per_subset: int = 3, n_raters: int = 6, seed: int = 0,
                   side: int = 96) -> Path:
    """Write SCUT-FBP5500_v2.zip (tiny) under out and return its path."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in sorted(scut_members(n_per_subset, n_raters, seed, side).items()):
            archive.writestr(name, data)
    path = out / SCUT_ZIP_NAME
    files.atomic_write_bytes(str(path), buffer.getvalue())
    return path


def write_ava_split_lists(out: Path, image_ids: list[str], seed: int = 0,
                          test_fraction: float = 0.25) -> tuple[Path, Path]:
    """Write generic_test.jpgl and generic_ls_train.jpgl (a seeded partition of image_ids)."""
    order = list(np.random.default_rng(seed + 5).permutation(sorted(image_ids)))
    cut = max(1, round(test_fraction * len(order)))
    test_path, train_path = out / "generic_test.jpgl", out / "generic_ls_train.jpgl"
    files.atomic_write_text(str(test_path), "".join(f"{i}\n" for i in sorted(order[:cut])))
    files.atomic_write_text(str(train_path), "".join(f"{i}\n" for i in sorted(order[cut:])))
    return test_path, train_path


def write_shifted_variant(out: Path, n: int = 200, seed: int = 0, noise: float = 0.05) -> Path:
    """A dataset rated on a shifted scale, with reference predictions and the true map.

    Writes out/labels.csv (image_id,score), out/predictions.parquet (image_id,prediction)
    where prediction = clip(SHIFT_K * score + SHIFT_B) + noise, and out/truth.json.
    """
    rng = np.random.default_rng(seed + 6)
    lo, hi = SHIFT_RANGE
    scores = np.round(rng.uniform(lo, hi, n), 4)
    reference = np.clip(SHIFT_K * scores + SHIFT_B, lo, hi) + rng.normal(0, noise, n)
    ids = [f"S{index:05d}" for index in range(n)]
    files.atomic_write_text(str(out / "labels.csv"), "image_id,score\n" + "".join(
        f"{image_id},{score:.4f}\n" for image_id, score in zip(ids, scores, strict=True)))
    files.atomic_write_parquet(str(out / "predictions.parquet"),
                               pa.table({"image_id": ids, "prediction": reference}))
    truth = {"k": SHIFT_K, "b": SHIFT_B, "range": list(SHIFT_RANGE), "noise": noise}
    files.atomic_write_text(str(out / "truth.json"), json.dumps(truth, indent=2) + "\n")
    return out


def write_extra_datasets(out: Path, seed: int) -> str:
    """AVA split lists beside out/AVA.txt, out/scut/SCUT-FBP5500_v2.zip and out/shifted/.

    Returns:
        One line describing what was written (for the sample CLI).
    """
    ava_lines = (out / "AVA.txt").read_text().splitlines()
    write_ava_split_lists(out, [line.split()[1] for line in ava_lines if line.strip()], seed)
    (out / "scut").mkdir(parents=True, exist_ok=True)
    archive = write_scut_zip(out / "scut", seed=seed)
    write_shifted_variant(out / "shifted", seed=seed)
    return (f"AVA split lists in {out}, SCUT release {archive}, scale-shifted variant "
            f"(k={SHIFT_K}, b={SHIFT_B}) in {out / 'shifted'}")
