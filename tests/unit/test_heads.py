"""Head architectures: parameter counts against the reference definition, EMD, streaming PLCC."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from features.training.heads import build_head
from schemas.errors import ConfigError


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
