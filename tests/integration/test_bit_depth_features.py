"""Through the real pipeline, 16- and 48-bit images give the features of their 8-bit twins."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from features import files
from features.download.manifest import build_manifest, entries_from_folder
from features.store.query import FeatureStore
from pipelines import extract
from tests.conftest import RANDOM_WEIGHTS
from tests.helpers.high_depth import pillow_bytes, png16, tiff48

VIEW = "irnv2_mlsp_narrow"
# (8-bit twin, high bit-depth file) pairs by image id.
TWINS = {"gray16_png": "gray8", "gray16_tiff": "gray8", "rgb48_png": "rgb8", "rgb48_tiff": "rgb8"}


def _write_images(directory: Path) -> None:
    rng = np.random.default_rng(1414)
    gray = rng.integers(0, 256, (80, 96), dtype=np.uint16)
    rgb = rng.integers(0, 256, (88, 80, 3), dtype=np.uint16)
    directory.mkdir(parents=True)
    encoded = {
        "gray8.png": pillow_bytes(Image.fromarray(gray.astype(np.uint8)), "PNG"),
        "gray16_png.png": png16(gray * 257),
        "gray16_tiff.tif": pillow_bytes(Image.fromarray(gray * 257), "TIFF"),
        "rgb8.png": pillow_bytes(Image.fromarray(rgb.astype(np.uint8)), "PNG"),
        "rgb48_png.png": png16(rgb * 257),
        "rgb48_tiff.tif": tiff48(rgb * 257),
    }
    for name, data in encoded.items():
        (directory / name).write_bytes(data)


def test_high_bit_depth_features_equal_their_8_bit_twins(tmp_path) -> None:
    _write_images(tmp_path / "images")
    manifest = tmp_path / "manifest.parquet"
    table = build_manifest(entries_from_folder(tmp_path / "images"), "bitdepth")
    files.atomic_write_parquet(str(manifest), table)
    argv = ["--manifest", str(manifest), "--store", str(tmp_path / "store"), "--view", VIEW]
    assert extract.run([*argv, "--weights", RANDOM_WEIGHTS, "--direct_num_workers", "1"]) == 0

    rows = FeatureStore(str(tmp_path / "store")).table(VIEW).to_pylist()
    by_id = {row["image_id"]: row for row in rows}
    assert {row["status"] for row in rows} == {"ok"}
    for high, low in TWINS.items():
        high_features = np.asarray(by_id[high]["features"], dtype=np.float32)
        low_features = np.asarray(by_id[low]["features"], dtype=np.float32)
        # Equal decoded pixels give equal features: within fp16 rounding, here exactly.
        np.testing.assert_allclose(high_features, low_features, rtol=2.0**-10, atol=0, err_msg=high)
    spread = np.asarray(by_id["gray8"]["features"]) - np.asarray(by_id["rgb8"]["features"])
    assert np.abs(spread).max() > 0  # different pictures do give different features
