"""Head architectures: parameter counts against the reference definition, EMD, streaming PLCC."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from features.training.heads import build_head
from schemas.errors import ConfigError
from schemas.view_spec import PREDEFINED_VIEWS, PyramidLayout


def dense(inputs: int, units: int) -> int:
    return inputs * units + units


def batch_norm(units: int, scale: bool = True) -> int:
    return (4 if scale else 3) * units  # gamma (if scaled), beta, moving mean, moving variance


def conv(inputs: int, filters: int, rows: int, cols: int) -> int:
    return rows * cols * inputs * filters  # no bias: batch norm follows


def reference_fc_chain(inputs: int, outputs: int) -> int:
    """ava-mlsp fc_layers(fc_sizes=[2048, 1024, 256, 1], batch_norm after all but the last)."""
    total, width = 0, inputs
    for size in (2048, 1024, 256):
        total += dense(width, size) + batch_norm(size)
        width = size
    return total + dense(width, outputs)


def reference_inception(channels: int) -> tuple[int, int]:
    """Parameters of the reference wide block and its output channels."""
    block = conv(channels, 1024, 1, 1) + batch_norm(1024, scale=False)  # 1x1
    block += conv(channels, 1024, 1, 1) + batch_norm(1024, scale=False)  # 1x1 before the split
    block += 2 * (conv(1024, 512, 1, 3) + batch_norm(512, scale=False))  # 1x3 and 3x1
    block += conv(channels, 1024, 1, 1) + batch_norm(1024, scale=False)  # after 3x3 avg pool
    return block, 1024 + 512 + 512 + 1024


@pytest.mark.parametrize("target, units", [("mos", 1), ("distribution", 10)])
def test_narrow_head_matches_the_reference_count(target: str, units: int) -> None:
    model = build_head("narrow", (16928,), target)
    assert model.count_params() == reference_fc_chain(16928, units)
    assert model.output_shape == (None, units)


def test_wide_head_matches_the_reference_count() -> None:
    model = build_head("wide", (5, 5, 16928), "mos")
    block, width = reference_inception(16928)
    assert model.count_params() == block + reference_fc_chain(width, 1)
    assert model.get_layer("inception_concat").output.shape[1:] == (5, 5, 3072)


def test_layer_details_follow_the_reference() -> None:
    model = build_head("narrow", (32,), "mos")
    dense_layers = [layer for layer in model.layers if layer.__class__.__name__ == "Dense"]
    assert [layer.units for layer in dense_layers] == [2048, 1024, 256, 1]
    assert [layer.activation.__name__ for layer in dense_layers] == ["relu"] * 3 + ["linear"]
    assert all(layer.kernel_initializer.__class__.__name__ == "HeNormal" for layer in dense_layers)
    rates = [layer.rate for layer in model.layers if layer.__class__.__name__ == "Dropout"]
    assert rates == [0.25, 0.25, 0.5]
    wide = build_head("wide", (5, 5, 8), "mos")
    norms = [layer for layer in wide.layers if layer.name.startswith("inception_b")]
    assert all(
        not layer.scale for layer in norms if layer.__class__.__name__ == "BatchNormalization"
    )


def test_head_refuses_features_of_the_wrong_rank() -> None:
    with pytest.raises(ConfigError, match="--head wide"):
        build_head("wide", (16928,), "mos")
    with pytest.raises(ConfigError, match="--head"):
        build_head("tiny", (16928,), "mos")
    with pytest.raises(ConfigError, match="--target"):
        build_head("narrow", (16928,), "ranks")


def test_irnv2_narrow_head_is_unchanged_by_the_pyramid_path() -> None:
    spec = PREDEFINED_VIEWS["irnv2_mlsp_narrow"]
    assert spec.pyramid_layout is None
    model = build_head("narrow", spec.feature_shape, "mos", layout=spec.pyramid_layout)
    chain = [f"pred_{kind}{i}" for i in range(3) for kind in ("fc", "bn", "dropout")]
    assert [layer.name for layer in model.layers] == ["features", *chain, "pred"]
    assert model.name == "mlsp_narrow_head"
    widths = [(16928, 2048), (2048, 1024), (1024, 256), (256, 1)]
    kernels = [tuple(w.shape) for w in model.weights if w.path.endswith("kernel")]
    assert kernels == widths
    assert model.count_params() == reference_fc_chain(16928, 1) == 37_044_737


def numpy_spp_bins(taps: list[np.ndarray], levels: tuple[int, ...]) -> np.ndarray:
    """[N, bins, sum C]: bin b of tap t at [:, b, offset_t:offset_t + C_t], by direct max."""
    per_tap = []
    for tap in taps:
        rows, cols = tap.shape[1:3]
        cells = []
        for n in levels:
            for i in range(n):
                for j in range(n):
                    r0, r1 = i * rows // n, -(-(i + 1) * rows // n)
                    c0, c1 = j * cols // n, -(-(j + 1) * cols // n)
                    cells.append(tap[:, r0:r1, c0:c1].max(axis=(1, 2)))
        per_tap.append(np.stack(cells, axis=1))
    return np.concatenate(per_tap, axis=-1)


def test_pyramid_bins_regroups_the_extraction_layout() -> None:
    from features.model.mlsp import pool_taps
    from features.training.keras_objects import PyramidBins
    from schemas.view_spec import PoolingSpec

    rng = np.random.default_rng(4)
    pooling = PoolingSpec("spp", levels=(1, 2))
    channels, sides = (2, 3, 4), ((7, 5), (4, 6), (3, 3))
    taps = [
        rng.normal(size=(3, rows, cols, c)).astype(np.float32)
        for (rows, cols), c in zip(sides, channels, strict=True)
    ]
    flat = np.asarray(pool_taps(taps, pooling))
    layout = PyramidLayout(pooling.bins, channels)
    assert layout.bins == 5 and flat.shape == (3, layout.size) == (3, 45)
    grouped = np.asarray(PyramidBins(layout.bins, layout.tap_channels)(flat))
    assert grouped.shape == (3, 5, 9)
    np.testing.assert_array_equal(grouped, numpy_spp_bins(taps, (1, 2)))
    # Bin 3 (level 2, row 1, col 0) of tap 1 (3 channels from offset 2) by hand.
    expected = taps[1][:, 2:4, 0:3].max(axis=(1, 2))
    np.testing.assert_array_equal(grouped[:, 3, 2:5], expected)


def test_spp_head_reduces_each_bin_then_runs_the_fc_chain() -> None:
    layout = PyramidLayout(5, (2, 3, 4))
    model = build_head("narrow", (45,), "mos", layout=layout)
    assert tuple(model.get_layer("pyramid_reduce").kernel.shape) == (9, 256)
    assert tuple(model.get_layer("pred_fc0").kernel.shape) == (5 * 256, 2048)
    reduction = dense(9, 256) + batch_norm(256)
    assert model.count_params() == reduction + reference_fc_chain(5 * 256, 1)


def test_spp_head_saves_and_loads_with_equal_outputs(tmp_path) -> None:
    from features.training.run_outputs import load_keras_model, save_keras_model

    model = build_head("narrow", (45,), "distribution", layout=PyramidLayout(5, (2, 3, 4)))
    path = str(tmp_path / "model.keras")
    save_keras_model(model, path)
    loaded = load_keras_model(path)
    assert loaded.get_layer("pyramid_bins").get_config()["tap_channels"] == [2, 3, 4]
    features = np.random.default_rng(5).normal(size=(6, 45)).astype(np.float32)
    np.testing.assert_array_equal(
        loaded.predict_on_batch(features), model.predict_on_batch(features)
    )


def test_irnv2_spp_narrow_head_size() -> None:
    spec = PREDEFINED_VIEWS["irnv2_spp"]
    layout = spec.pyramid_layout
    assert layout == PyramidLayout(1 + 4 + 9 + 36, layout.tap_channels)
    assert layout.channels == 16928 and len(layout.tap_channels) == 43
    assert layout.tap_channels[:2] == (320, 128) and layout.tap_channels[-1] == 448
    model = build_head("narrow", spec.feature_shape, "mos", layout=layout)
    expected = dense(16928, 256) + batch_norm(256) + reference_fc_chain(50 * 256, 1)
    assert model.count_params() == expected == 32_925_441


def test_head_refuses_a_layout_that_does_not_fit() -> None:
    layout = PyramidLayout(5, (2, 3, 4))
    with pytest.raises(ConfigError, match="5 bins x 9 channels"):
        build_head("narrow", (46,), "mos", layout=layout)
    with pytest.raises(ConfigError, match="--head wide"):
        build_head("wide", (5, 1, 9), "mos", layout=layout)


def test_emd_loss_matches_numpy() -> None:
    from features.training.keras_objects import earth_movers_distance
    from features.training.metrics import earth_movers_distance as numpy_emd

    rng = np.random.default_rng(0)
    truth = rng.dirichlet(np.ones(10), size=5).astype(np.float32)
    prediction = rng.dirichlet(np.ones(10), size=5).astype(np.float32)
    keras_value = np.asarray(earth_movers_distance(truth, prediction))
    np.testing.assert_allclose(keras_value, numpy_emd(truth, prediction), rtol=1e-5)


@pytest.mark.parametrize("reader", ["value", "distribution"])
def test_streaming_plcc_equals_scipy_over_batches(reader: str) -> None:
    from features.training.keras_objects import StreamingPLCC
    from features.training.metrics import mos_from_distribution

    rng = np.random.default_rng(1)
    if reader == "value":
        truth = rng.normal(5, 1, (37, 1))
        prediction = truth + rng.normal(0, 0.7, (37, 1))
        x, y = truth[:, 0], prediction[:, 0]
    else:
        truth = rng.dirichlet(np.ones(10), size=37)
        prediction = rng.dirichlet(np.ones(10), size=37)
        x, y = mos_from_distribution(truth), mos_from_distribution(prediction)
    metric = StreamingPLCC(score_reader=reader)
    for start in range(0, 37, 8):
        metric.update_state(truth[start : start + 8], prediction[start : start + 8])
    assert float(metric.result()) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-9)
    metric.reset_state()
    assert float(metric.result()) == 0.0
