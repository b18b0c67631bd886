"""Extraction at scale: Dask LocalCluster, HDF5 format, augmentation variants, Dataflow dry run."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from features.extraction.variants import VARIANT_SETS, apply_variant
from features.model.mlsp import ExtractorKey, get_extractor
from features.store.query import FeatureStore
from pipelines import extract
from schemas.view_spec import PREDEFINED_VIEWS
from tests.conftest import RANDOM_WEIGHTS
from tests.helpers.extract_cli import NARROW, extract_argv, runner_argv
from tests.reference import decode_reference


@pytest.fixture(scope="module")
def direct_store(sample_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("direct") / "store"
    assert extract.run(extract_argv(sample_manifest, store)) == 0
    return store


def _assert_same_view(left: Path, right: Path, view: str = NARROW) -> None:
    a = FeatureStore(str(left)).table(view).drop_columns(["read_ms", "decode_ms", "model_ms"])
    b = FeatureStore(str(right)).table(view).drop_columns(["read_ms", "decode_ms", "model_ms"])
    assert a.drop_columns(["features"]).equals(b.drop_columns(["features"]))
    values_a = a.column("features").combine_chunks()
    values_b = b.column("features").combine_chunks()
    assert values_a.is_null().to_pylist() == values_b.is_null().to_pylist()
    ok = [i for i, null in enumerate(values_a.is_null().to_pylist()) if not null]
    np.testing.assert_allclose(
        values_a.take(ok).to_numpy_ndarray().astype(np.float32),
        values_b.take(ok).to_numpy_ndarray().astype(np.float32),
        rtol=2.0**-10,
        atol=1e-6,
    )


def test_dask_local_cluster_matches_direct_runner(sample_manifest, direct_store, tmp_path) -> None:
    store = tmp_path / "dask"
    argv = extract_argv(sample_manifest, store, "--runner", "dask", "--dask-workers", "2")
    assert extract.run(argv) == 0
    _assert_same_view(direct_store, store)
    history = FeatureStore(str(store)).view(NARROW).run_history()[-1]
    assert history["runner"] == "dask"
    assert history["shards_committed_this_run"] == 5  # counted from markers: Dask has no metrics
    assert sum(history["status_counts"].values()) == 17


def test_hdf5_format_equals_zarr_and_exposes_a_virtual_dataset(
    sample_manifest, direct_store, tmp_path, monkeypatch
) -> None:
    store = tmp_path / "h5"
    assert extract.run(extract_argv(sample_manifest, store, "--format", "hdf5")) == 0
    _assert_same_view(direct_store, store)
    monkeypatch.chdir(tmp_path)  # the virtual file resolves its sources relative to itself
    table = FeatureStore(str(direct_store)).table(NARROW)
    with h5py.File(store / NARROW / "features.hdf5" / "features.h5", "r") as handle:
        virtual = handle["features"][...]
    assert virtual.shape == (17, 1, 16928)
    expected = FeatureStore(str(store)).view(NARROW).array.read_range(0, 17)
    np.testing.assert_array_equal(virtual, expected)
    assert np.isnan(
        virtual[[r for r, s in enumerate(table.column("status").to_pylist()) if s != "ok"]]
    ).all()


def test_train8_variants_equal_direct_calls_on_crops(sample_dir, sample_manifest, tmp_path) -> None:
    store = tmp_path / "aug"
    argv = extract_argv(
        sample_manifest, store, "--variants", "train8", "--view-name", "narrow_train8"
    )
    assert extract.run(argv) == 0
    spec = PREDEFINED_VIEWS[NARROW]
    model = get_extractor(ExtractorKey(RANDOM_WEIGHTS, spec.taps, (("x", spec.pooling),)))
    table = FeatureStore(str(store)).table("narrow_train8", filter="status == 'ok'")
    stored = table.column("features").combine_chunks().to_numpy_ndarray()
    assert stored.shape[1:] == (8, 16928)
    assert FeatureStore(str(store)).view("narrow_train8").spec.variants == VARIANT_SETS["train8"]
    for position, image_id in enumerate(table.column("image_id").to_pylist()[:3]):
        pixels = decode_reference(str(sample_dir / "images" / f"{image_id}.jpg"))
        for slot, name in enumerate(VARIANT_SETS["train8"]):
            direct = model.extract(np.ascontiguousarray(apply_variant(pixels, name))[None])["x"][0]
            np.testing.assert_allclose(
                stored[position, slot].astype(np.float32),
                direct,
                rtol=2.0**-10,
                atol=1e-6,
                err_msg=f"{image_id} {name}",
            )


def test_other_spec_on_existing_view_is_refused(sample_manifest, direct_store, capsys) -> None:
    code = extract.run(extract_argv(sample_manifest, direct_store, "--variants", "train8"))
    assert code == 1
    assert "fields differ: variants" in capsys.readouterr().err


def test_dataflow_dry_run_prints_options_and_graph_without_writing(tmp_path, capsys) -> None:
    argv = runner_argv(
        "dataflow",
        "--experiments=use_runner_v2",
        manifest="gs://bucket/ava/manifest.parquet",
        store="gs://bucket/store",
        views=(NARROW, "irnv2_mlsp_wide"),
        weights="imagenet",
        project="my-project",
        region="europe-west4",
        temp_location="gs://bucket/tmp",
        worker_accelerator="nvidia-l4:1",
        machine_type="g2-standard-8",
    )
    # GPUs need the GPU worker image: without one the workers would be CPU-only (exit 2)
    assert extract.run(argv) == 2
    assert "--sdk-container-image" in capsys.readouterr().err
    image = "europe-west4-docker.pkg.dev/my-project/r/mlsp-gpu:abc123"
    assert extract.run([*argv, "--sdk-container-image", image]) == 0
    out = capsys.readouterr().out
    assert "runner dataflow (DataflowRunner)" in out
    assert "project = my-project" in out and "region = europe-west4" in out
    assert "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver" in out
    assert f"container_image = {image}" in out and "device = gpu" in out
    assert "setup_file = -" in out and "use_runner_v2" in out
    assert "ShardSpecs -> Spread -> ExtractShard -> Totals -> LogTotals" in out
    local = runner_argv("dataflow", manifest=str(tmp_path / "m.parquet"), store="gs://b/s")
    assert extract.run(local) == 2
    assert "use URLs for --manifest" in capsys.readouterr().err


def test_fsspec_store_and_manifest_urls(sample_manifest, direct_store, tmp_path) -> None:
    import fsspec

    memory = fsspec.filesystem("memory")
    memory.pipe_file("/inputs/manifest.parquet", sample_manifest.read_bytes())
    store = f"memory://stores/{tmp_path.name}"
    argv = extract_argv("memory://inputs/manifest.parquet", store)
    assert extract.run(argv) == 0
    local_copy = tmp_path / "copy"
    memory.get(f"/stores/{tmp_path.name}", str(local_copy), recursive=True)
    _assert_same_view(direct_store, local_copy)
