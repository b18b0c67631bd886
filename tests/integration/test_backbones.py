"""Every registered backbone against independent counts and numpy pooling (real Keras models)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from features.model.backbones import BACKBONES
from features.model.mlsp import (
    ExtractorKey,
    build_backbone,
    get_extractor,
    pool_taps,
    same_size_groups,
)
from schemas.backbones import BACKBONE_FACTS
from schemas.errors import ConfigError, WeightsUnavailableError
from schemas.view_spec import PoolingSpec, minimum_input_side
from tests.conftest import RANDOM_WEIGHTS
from tests.reference import reference_pool, reference_spp, spp_bin_edges

CHANNEL_TOTALS = {
    "inception_resnet_v2": 16928,
    "inception_v3": 10048,
    "mobilenet_v3_large": 2168,
    "mobilenet_v3_small": 1144,
    "mnasnet_a1": 2808,
}


def _independent_taps(name: str, model) -> list[tuple[str, int]]:
    """Tap names and channels read off the built Keras model, by each backbone's documented rule."""
    layers = {layer.name: layer for layer in model.layers}
    if name == "inception_resnet_v2":  # MLSP: every layer whose name contains 'mixed'
        chosen = [(layer.name, layer.output) for layer in model.layers if "mixed" in layer.name]
    elif name == "inception_v3":  # kutils: get_layer('mixed%d' % i) for i in range(11)
        chosen = [(f"mixed{i}", layers[f"mixed{i}"].output) for i in range(11)]
    elif name.startswith("mobilenet_v3"):  # each inverted-residual block's output, then the end
        blocks = [n for n in layers if re.fullmatch(r"expanded_conv(_\d+)?_project_bn", n)]
        outputs = [n.replace("project_bn", "add") for n in blocks]
        chosen = [
            (n if n in layers else b, layers[n if n in layers else b].output)
            for n, b in zip(outputs, blocks, strict=True)
        ]
        chosen.append(("conv_1_act", model.output))
    else:  # MnasNet: every block output, then the head activation
        chosen = [(n, layers[n].output) for n in layers if re.fullmatch(r"block\d+_out", n)]
        chosen.append(("head_relu", model.output))
    return [(tap, int(output.shape[-1])) for tap, output in chosen]


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_tap_list_and_channel_total_match_the_built_model(name) -> None:
    found = _independent_taps(name, build_backbone(name))
    assert found == list(BACKBONE_FACTS[name].taps)
    assert sum(channels for _, channels in found) == CHANNEL_TOTALS[name]


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_declared_map_sides_and_minimums_match_the_model(name) -> None:
    import keras
    import tensorflow as tf

    entry, facts = BACKBONES[name], BACKBONE_FACTS[name]
    model = build_backbone(name)
    taps = keras.Model(model.input, entry.tap_outputs(model, facts.tap_names))
    spp_minimum = minimum_input_side(facts, PoolingSpec("spp", levels=(1, 2, 3, 6)))
    for side in (facts.min_input_side, spp_minimum - 1, spp_minimum):
        maps = taps(np.zeros((1, side, side + 37, 3), np.float32))
        assert min(int(tap.shape[1]) for tap in maps) == facts.last_map_side(side), side
    assert facts.last_map_side(facts.min_input_side) >= 1
    assert facts.last_map_side(spp_minimum) >= 6 > facts.last_map_side(spp_minimum - 1)
    if name.startswith("mobilenet_v3"):
        # One pixel below the minimum the last maps would be empty. Depending on the
        # TensorFlow/Keras release the model then either fails inside (an op refuses the empty
        # map: TF 2.21, Keras 3.15) or returns maps that grow again after shrinking to 1x1
        # (garbage, with earlier releases): never usable features, hence the hard minimum.
        below = facts.min_input_side - 1
        assert facts.last_map_side(below) == 0
        try:
            maps = taps(np.zeros((1, below, below, 3), np.float32))
        except tf.errors.InvalidArgumentError as error:
            # the op that refuses was fed the empty 0x0 map last_map_side predicts
            assert re.search(r"shape=\(1, 0, 0, \d+\)", str(error)), str(error)[:500]
        else:
            sides = [int(tap.shape[1]) for tap in maps]
            assert min(sides) <= 1 and sides != sorted(sides, reverse=True)


POOLINGS = {"gap": PoolingSpec("gap"), "area": PoolingSpec("grid", (3, 3))}
POOLINGS["spp"] = PoolingSpec("spp", levels=(1, 2, 3))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_forward_pass_equals_numpy_pooling_of_the_taps(name) -> None:
    facts = BACKBONE_FACTS[name]
    key = ExtractorKey(RANDOM_WEIGHTS, facts.tap_names, tuple(POOLINGS.items()), backbone=name)
    extractor = get_extractor(key)
    side = minimum_input_side(facts, POOLINGS["spp"])  # every spp bin has a cell of its own
    images = np.random.default_rng(side).integers(0, 256, (2, side + 7, side + 30, 3), np.uint8)
    outputs = extractor.extract(images)
    raw_taps = extractor.tap_activations(images)
    for item in range(2):
        taps = [tap[item] for tap in raw_taps]
        assert all(np.isfinite(tap).all() and np.abs(tap).max() < 6e4 for tap in taps)
        expected = {
            "gap": reference_pool(taps, "gap"),
            "area": reference_pool(taps, "grid", (3, 3)),
            "spp": reference_spp(taps, (1, 2, 3)),
        }
        for pooling, values in expected.items():
            got = outputs[pooling][item]
            assert got.shape == POOLINGS[pooling].feature_shape(CHANNEL_TOTALS[name])
            assert np.max(np.abs(got - values)) / np.abs(values).max() < 1e-5, pooling
    assert extractor.tracing_count == 1


# Bin edges worked out by hand from [floor(i * a / n), ceil((i + 1) * a / n)).
HAND_EDGES = {
    (13, 6): [(0, 3), (2, 5), (4, 7), (6, 9), (8, 11), (10, 13)],
    (17, 6): [(0, 3), (2, 6), (5, 9), (8, 12), (11, 15), (14, 17)],
    (9, 6): [(0, 2), (1, 3), (3, 5), (4, 6), (6, 8), (7, 9)],
    (7, 6): [(0, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7)],
    (6, 6): [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6)],
    (13, 3): [(0, 5), (4, 9), (8, 13)],
    (17, 3): [(0, 6), (5, 12), (11, 17)],
    (7, 3): [(0, 3), (2, 5), (4, 7)],
    (6, 3): [(0, 2), (2, 4), (4, 6)],
    (9, 3): [(0, 3), (3, 6), (6, 9)],
    (13, 2): [(0, 7), (6, 13)],
    (17, 2): [(0, 9), (8, 17)],
    (7, 2): [(0, 4), (3, 7)],
    (6, 2): [(0, 3), (3, 6)],
    (9, 2): [(0, 5), (4, 9)],
}


@pytest.mark.parametrize(("rows", "cols"), [(13, 17), (7, 7), (6, 9)])
def test_spp_bins_cover_exactly_the_cells_of_their_edges(rows, cols) -> None:
    import tensorflow as tf

    levels = (1, 2, 3, 6)
    for side in (rows, cols):
        for n in (2, 3, 6):
            assert spp_bin_edges(side, n) == HAND_EDGES[(side, n)]
    # Channel k holds +1 at cell k and -1 elsewhere: a bin's max is +1 iff it contains cell k.
    cells = rows * cols
    spikes = -np.ones((1, rows, cols, cells), np.float32)
    for k in range(cells):
        spikes[0, k // cols, k % cols, k] = 1.0
    pooled = pool_taps([tf.constant(spikes)], PoolingSpec("spp", levels=levels)).numpy()[0]
    offset = 0
    for n in levels:
        grid = pooled[offset : offset + n * n * cells].reshape(n, n, cells)
        offset += n * n * cells
        row_edges = HAND_EDGES.get((rows, n), [(0, rows)])
        col_edges = HAND_EDGES.get((cols, n), [(0, cols)])
        for i, (r0, r1) in enumerate(row_edges):
            for j, (c0, c1) in enumerate(col_edges):
                inside = np.zeros((rows, cols), bool)
                inside[r0:r1, c0:c1] = True
                np.testing.assert_array_equal(grid[i, j], np.where(inside.ravel(), 1.0, -1.0))
    assert offset == pooled.size
    values = np.random.default_rng(rows * cols).standard_normal((1, rows, cols, 5), np.float32)
    got = pool_taps([tf.constant(values)], PoolingSpec("spp", levels=levels)).numpy()[0]
    np.testing.assert_array_equal(got, reference_spp([values[0]], levels))


def test_spp_pooled_by_size_group_equals_spp_per_tap() -> None:
    """Taps of one map size are pooled together; the result is the per-tap one, bit for bit,
    and a grouping that joins maps of different sizes fails instead of pooling wrongly."""
    import tensorflow as tf

    rng = np.random.default_rng(11)
    sizes = [(13, 17), (13, 17), (7, 9), (7, 9), (7, 9), (6, 6)]
    taps = [
        tf.constant(rng.standard_normal((2, h, w, c)).astype(np.float32))
        for (h, w), c in zip(sizes, (3, 5, 2, 4, 1, 6), strict=True)
    ]
    pooling = PoolingSpec("spp", levels=(1, 2, 3, 6))
    per_tap = pool_taps(taps, pooling).numpy()
    grouped = pool_taps(taps, pooling, (0, 0, 1, 1, 1, 2)).numpy()
    np.testing.assert_array_equal(grouped, per_tap)
    np.testing.assert_array_equal(
        per_tap[1], reference_spp([t.numpy()[1] for t in taps], (1, 2, 3, 6))
    )
    with pytest.raises(tf.errors.InvalidArgumentError):
        pool_taps(taps, pooling, (0, 0, 0, 1, 1, 2))


def test_irnv2_taps_fall_into_its_three_map_sizes() -> None:
    """mixed_5b + 10 block35 (35x35 at 299), mixed_6a + 20 block17, mixed_7a + 10 block8."""
    import keras

    entry = BACKBONES["inception_resnet_v2"]
    backbone = build_backbone("inception_resnet_v2")
    taps = keras.Model(backbone.input, entry.tap_outputs(backbone, entry.facts.tap_names))
    groups = same_size_groups(taps, entry.facts.min_input_side)
    assert [groups.count(number) for number in sorted(set(groups))] == [11, 21, 11]
    assert list(groups) == sorted(groups)


def test_spp_equals_the_paper_windows_when_the_side_divides() -> None:
    """SPPNet: window ceil(a/n), stride floor(a/n); for a divisible by n that is our bin."""
    for a in (6, 12, 18, 36):
        for n in (1, 2, 3, 6):
            window, stride = -(-a // n), a // n
            assert spp_bin_edges(a, n) == [(i * stride, i * stride + window) for i in range(n)]


def test_mnasnet_classifier_has_the_papers_parameter_count() -> None:
    from features.model.mnasnet import build_mnasnet_a1

    model = build_mnasnet_a1(include_top=True, input_shape=(224, 224, 3))
    trainable = sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)
    assert trainable == 3_887_038
    assert round(trainable / 1e6, 1) == 3.9  # MnasNet paper, table 1: 3.9M


def test_mnasnet_refuses_imagenet_weights_saying_how_to_supply_a_file() -> None:
    from features.extraction.planning import weights_sha256

    with pytest.raises(ConfigError, match="No Keras ImageNet weights exist") as error:
        weights_sha256("imagenet", backbone="mnasnet_a1")
    assert "--weights PATH" in str(error.value) and "random:SEED" in str(error.value)


@pytest.mark.parametrize("name", ["inception_v3", "mobilenet_v3_large", "mobilenet_v3_small"])
def test_imagenet_offline_names_the_backbones_keras_file(name, tmp_path, monkeypatch) -> None:
    import keras

    from features.model.weights import IMAGENET_WEIGHTS, imagenet_weights_path

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(WeightsUnavailableError) as error:
        imagenet_weights_path(backbone=name)
    assert str(tmp_path / "models" / IMAGENET_WEIGHTS[name].file) in str(error.value)


def _save(model, path) -> None:
    if path.name.endswith(".weights.h5"):
        model.save_weights(str(path))
        return
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)


@pytest.mark.parametrize("file_name", ["small.weights.h5", "small_legacy.h5"])
def test_weights_that_do_not_fit_name_the_file_and_the_first_layer(tmp_path, file_name) -> None:
    from features.model.weights import file_sha256, load_weights_into, parse_weights_id

    small = build_backbone("mobilenet_v3_small")
    random_digest = load_weights_into(small, parse_weights_id("random:3"), "mobilenet_v3_small")
    path = tmp_path / file_name
    _save(small, path)
    again = build_backbone("mobilenet_v3_small")
    assert load_weights_into(again, parse_weights_id(str(path))) == file_sha256(path)
    for mine, theirs in zip(again.weights, small.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
    assert random_digest != file_sha256(path)
    with pytest.raises(WeightsUnavailableError) as error:
        load_weights_into(build_backbone("mnasnet_a1"), parse_weights_id(str(path)), "mnasnet_a1")
    message = str(error.value)
    assert str(path) in message and "mnasnet_a1" in message
    assert "first mismatched layer: layer 'stem_conv'" in message


def test_random_weights_are_deterministic_with_he_scaled_depthwise_kernels() -> None:
    from features.model.weights import load_weights_into, parse_weights_id

    digests = []
    for seed in ("random:5", "random:5", "random:6"):
        model = build_backbone("mobilenet_v3_small")
        digests.append(load_weights_into(model, parse_weights_id(seed), "mobilenet_v3_small"))
    assert digests[0] == digests[1] != digests[2]
    depthwise = np.asarray(model.get_layer("expanded_conv_depthwise").kernel)  # [3, 3, 16, 1]
    assert abs(depthwise.std() / np.sqrt(2.0 / 9.0) - 1.0) < 0.15
