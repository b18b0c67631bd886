"""Extraction on Beam's DirectRunner: values equal direct model calls, bad files become statuses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from features import files
from features.download.manifest import build_manifest, entries_from_folder
from features.model.mlsp import ExtractorKey, get_extractor
from features.store.query import FeatureStore
from pipelines import extract
from schemas.view_spec import PREDEFINED_VIEWS
from tests.conftest import RANDOM_WEIGHTS
from tests.reference import decode_reference

NARROW, WIDE = "irnv2_mlsp_narrow", "irnv2_mlsp_wide"
EXPECTED_BROKEN = {
    "900001": "zero_bytes",
    "900002": "truncated",
    "900003": "decode_error",
    "900004": "too_small",
    "900005": "decompression_bomb",
}


@pytest.fixture(scope="module")
def extracted(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Copy the sample, index it, then delete one file and alter another before extracting."""
    work = tmp_path_factory.mktemp("extract")
    shutil.copytree(sample_dir / "images", work / "images")
    manifest = build_manifest(entries_from_folder(work / "images"), "sample")
    files.atomic_write_parquet(str(work / "manifest.parquet"), manifest)
    (work / "images" / "100012.jpg").unlink()
    altered = work / "images" / "100011.jpg"
    altered.write_bytes(altered.read_bytes()[:-10] + b"0123456789")
    store = str(work / "store")
    argv = [
        "--manifest",
        str(work / "manifest.parquet"),
        "--store",
        store,
        "--view",
        NARROW,
        "--view",
        WIDE,
        "--weights",
        RANDOM_WEIGHTS,
        "--shard-size",
        "4",
    ]
    code = extract.run(argv)
    return {"work": work, "store": store, "argv": argv, "code": code}


def test_run_completes_and_reports_every_row(extracted) -> None:
    assert extracted["code"] == 0
    store = FeatureStore(extracted["store"])
    for view in (NARROW, WIDE):
        index = store.index(view)
        assert index.num_rows == 17
        assert index.column("row").to_pylist() == list(range(17))


def test_bad_files_get_the_right_status_and_null_features(extracted) -> None:
    table = FeatureStore(extracted["store"]).table(NARROW)
    statuses = dict(
        zip(table.column("image_id").to_pylist(), table.column("status").to_pylist(), strict=True)
    )
    expected = {**EXPECTED_BROKEN, "100012": "missing", "100011": "checksum_mismatch"}
    for image_id, status in expected.items():
        assert statuses[image_id] == status, image_id
    assert sum(status == "ok" for status in statuses.values()) == 10
    errors = dict(
        zip(table.column("image_id").to_pylist(), table.column("error").to_pylist(), strict=True)
    )
    assert "900004.jpg" in errors["900004"] and "75 px" in errors["900004"]
    features = table.column("features")
    for position, image_id in enumerate(table.column("image_id").to_pylist()):
        assert features[position].is_valid == (statuses[image_id] == "ok")


@pytest.mark.parametrize("view_name", [NARROW, WIDE])
def test_every_good_row_equals_a_direct_model_call(extracted, view_name) -> None:
    spec = PREDEFINED_VIEWS[view_name]
    model = get_extractor(ExtractorKey(RANDOM_WEIGHTS, spec.taps, (("x", spec.pooling),)))
    table = FeatureStore(extracted["store"]).table(view_name, filter="status == 'ok'")
    stored = table.column("features").combine_chunks().to_numpy_ndarray()
    assert stored.dtype == np.float16 and stored.shape[1:] == (1, *spec.feature_shape)
    for position, image_id in enumerate(table.column("image_id").to_pylist()):
        pixels = decode_reference(str(extracted["work"] / "images" / f"{image_id}.jpg"))
        direct = model.extract(pixels[None])["x"][0]
        np.testing.assert_allclose(
            stored[position, 0].astype(np.float32),
            direct,
            rtol=2.0**-10,
            atol=1e-6,
            err_msg=image_id,
        )


def test_lineage_records_the_weights_that_produced_the_features(extracted) -> None:
    store = FeatureStore(extracted["store"])
    spec = PREDEFINED_VIEWS[NARROW]
    model = get_extractor(ExtractorKey(RANDOM_WEIGHTS, spec.taps, (("x", spec.pooling),)))
    for view in (NARROW, WIDE):
        recorded = store.view(view).spec
        assert recorded.weights_id == RANDOM_WEIGHTS
        assert recorded.weights_sha256 == model.weights_sha256
        history = store.view(view).run_history()
        assert history[-1]["weights_sha256"] == model.weights_sha256
        assert history[-1]["status_counts"]["ok"] == 10


def test_index_parts_are_plain_parquet(extracted) -> None:
    part = pq.read_table(Path(extracted["store"]) / NARROW / "index" / "shard-000000.parquet")
    assert part.column("row").to_pylist() == [0, 1, 2, 3]
    marker = json.loads(
        (Path(extracted["store"]) / NARROW / "commits" / "shard-000000.json").read_text()
    )
    assert marker["row_start"] == 0 and marker["row_stop"] == 4


def test_rerun_skips_everything_and_fail_on_errors_exits_3(extracted, capsys) -> None:
    model = get_extractor(
        ExtractorKey(
            RANDOM_WEIGHTS,
            PREDEFINED_VIEWS[NARROW].taps,
            ((NARROW, PREDEFINED_VIEWS[NARROW].pooling), (WIDE, PREDEFINED_VIEWS[WIDE].pooling)),
        )
    )
    before = model.images_forwarded
    assert extract.run([*extracted["argv"], "--fail-on-errors"]) == 3
    assert model.images_forwarded == before
    assert "0 written this run" in capsys.readouterr().out


def _pairs(argv: list[str]) -> list[tuple[str, str]]:
    """(previous argument, argument) pairs."""
    return list(zip(["", *argv[:-1]], argv, strict=True))


def test_uncompressed_view_holds_the_same_features(extracted, tmp_path, capsys) -> None:
    """--compression none: no blosc codec in zarr.json, features bit-equal to the default
    (lz4) store."""
    store = str(tmp_path / "raw")
    argv = [store if previous == "--store" else arg for previous, arg in _pairs(extracted["argv"])]
    assert extract.run([*argv, "--compression", "none"]) == 0  # same views: same cached model
    for name in (NARROW, WIDE):
        meta = json.loads((Path(store) / name / "features.zarr" / "zarr.json").read_text())
        assert "blosc" not in json.dumps(meta["codecs"])
        raw, lz4 = FeatureStore(store).view(name), FeatureStore(extracted["store"]).view(name)
        assert (raw.compression, lz4.compression) == ("none", "lz4")
        rows = raw.allocation.num_rows
        np.testing.assert_array_equal(
            raw.array.read_range(0, rows).view(np.uint16),
            lz4.array.read_range(0, rows).view(np.uint16),
        )
    assert extract.run([*extracted["argv"], "--compression", "zstd"]) == 1
    assert "'irnv2_mlsp_narrow' is stored with lz4 compression, not zstd" in capsys.readouterr().err
