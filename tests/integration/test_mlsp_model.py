"""The MLSP model against an independent per-tap computation (real Keras backbone)."""

from __future__ import annotations

import numpy as np
import pytest

from features.model.mlsp import ExtractorKey, build_backbone, get_extractor, tap_layers
from schemas.view_spec import INCEPTION_RESNET_V2_TAPS, PREDEFINED_VIEWS
from tests.conftest import RANDOM_WEIGHTS
from tests.reference import reference_pool

NARROW = PREDEFINED_VIEWS["irnv2_mlsp_narrow"]
WIDE = PREDEFINED_VIEWS["irnv2_mlsp_wide"]


@pytest.fixture(scope="module")
def extractor():
    key = ExtractorKey(
        RANDOM_WEIGHTS, NARROW.taps, (("narrow", NARROW.pooling), ("wide", WIDE.pooling))
    )
    return get_extractor(key)


def test_backbone_has_43_mixed_taps_with_16928_channels() -> None:
    layers = tap_layers(build_backbone())
    assert [layer.name for layer in layers] == [name for name, _ in INCEPTION_RESNET_V2_TAPS]
    channels = [int(layer.output.shape[-1]) for layer in layers]
    assert len(layers) == 43
    assert sum(channels) == 16928
    assert channels == [count for _, count in INCEPTION_RESNET_V2_TAPS]


@pytest.mark.parametrize("size", [(96, 131), (150, 77)])
def test_narrow_and_wide_equal_independent_pooling_of_raw_taps(extractor, size) -> None:
    import tensorflow as tf

    rng = np.random.default_rng(sum(size))
    images = rng.integers(0, 256, (2, *size, 3), dtype=np.uint8)
    outputs = extractor.extract(images)
    raw_taps = extractor._tap_model(tf.constant(images, tf.float32) / 127.5 - 1.0, training=False)
    raw_taps = [np.asarray(tap) for tap in raw_taps]
    for item in range(2):
        taps = [tap[item] for tap in raw_taps]
        narrow = reference_pool(taps, "gap")
        wide = reference_pool(taps, "grid", (5, 5))
        assert outputs["narrow"][item].shape == (16928,)
        assert outputs["wide"][item].shape == (5, 5, 16928)
        scale_n, scale_w = np.abs(narrow).max(), np.abs(wide).max()
        assert np.max(np.abs(outputs["narrow"][item] - narrow)) / scale_n < 1e-5
        assert np.max(np.abs(outputs["wide"][item] - wide)) / scale_w < 1e-5


def test_one_trace_serves_every_image_size(extractor) -> None:
    for size in [(80, 80), (123, 97), (200, 90), (80, 80)]:
        extractor.extract(np.zeros((1, *size, 3), np.uint8))
    assert extractor.tracing_count == 1


def test_random_weights_are_deterministic_and_recorded(extractor) -> None:
    from features.model.weights import arrays_sha256, random_weight_arrays

    backbone = build_backbone()
    shapes = [(v.path.split("/")[-1], tuple(v.shape)) for v in backbone.weights]
    assert arrays_sha256(random_weight_arrays(shapes, 0)) == extractor.weights_sha256
    assert arrays_sha256(random_weight_arrays(shapes, 1)) != extractor.weights_sha256


def _random_backbone():
    from features.model.weights import load_weights_into, parse_weights_id

    backbone = build_backbone()
    load_weights_into(backbone, parse_weights_id(RANDOM_WEIGHTS))
    return backbone


def _save_legacy_h5(backbone, path) -> None:
    """The format of the original *_notop.h5 ImageNet file (Keras 2 HDF5 weights)."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, backbone)


@pytest.mark.parametrize("file_name", ["irnv2.weights.h5", "irnv2_notop_legacy.h5"])
def test_weights_files_load_and_lineage_hashes_the_file(extractor, tmp_path, file_name) -> None:
    from features.model.weights import file_sha256

    backbone = _random_backbone()
    path = tmp_path / file_name
    if file_name.endswith(".weights.h5"):
        backbone.save_weights(str(path))
    else:
        _save_legacy_h5(backbone, path)
    from_file = get_extractor(ExtractorKey(str(path), NARROW.taps, extractor.key.poolings))
    assert from_file.weights_sha256 == file_sha256(path)
    images = np.random.default_rng(5).integers(0, 256, (1, 90, 100, 3), dtype=np.uint8)
    expected, got = extractor.extract(images), from_file.extract(images)
    np.testing.assert_array_equal(got["narrow"], expected["narrow"])


def test_imagenet_offline_fails_saying_where_to_put_the_file(tmp_path, monkeypatch) -> None:
    import keras

    from features.model.weights import IMAGENET_FILE, imagenet_weights_path
    from schemas.errors import WeightsUnavailableError

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(WeightsUnavailableError) as error:
        imagenet_weights_path()
    assert str(tmp_path / "models" / IMAGENET_FILE) in str(error.value)
    assert "random:SEED" in str(error.value)
