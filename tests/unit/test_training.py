"""Head training on small synthetic views: both heads, both targets, config validation, CLI errors."""

from __future__ import annotations

import numpy as np
import pytest

from features.training.trainer import TrainConfig, lineage, train_head
from jobs import evaluate, predict, train
from schemas.errors import ConfigError
from schemas.view_spec import FeatureViewSpec, PoolingSpec
from tests.helpers.synthetic_store import build_encoded_view, labels_by_row

NARROW = FeatureViewSpec(name="narrow", taps=("mixed_5b",), weights_id="random:1")
WIDE = FeatureViewSpec(
    name="wide", taps=("mixed_5b",), pooling=PoolingSpec("grid", (2, 2)), weights_id="random:1"
)


def labels(n: int):
    ids = [f"img{i:04d}" for i in range(n)]
    return labels_by_row(ids, ["val" if i % 4 == 0 else "train" for i in range(n)])


@pytest.mark.parametrize(
    "spec, head, target, units",
    [(NARROW, "narrow", "distribution", 10), (WIDE, "wide", "mos", 1)],
    ids=["narrow-distribution", "wide-mos"],
)
def test_one_stage_trains_and_records_lineage(tmp_path, spec, head, target, units) -> None:
    view = build_encoded_view(str(tmp_path), spec, 24, 8, frozenset({5}))
    config = TrainConfig(
        store=str(tmp_path),
        view=spec.name,
        labels="memory",
        head=head,
        target=target,
        batch_size=8,
        epochs_per_stage=2,
        learning_rates=(1e-3,),
    )
    result = train_head(view, labels(24), config, verbose=0)
    assert result.model.output_shape == (None, units)
    assert [row["epoch"] for row in result.history] == [0, 1]
    assert {"loss", "plcc", "val_loss", "val_plcc"} <= set(result.history[0])
    assert result.monitor == "val_plcc"
    assert result.bn_momentum == pytest.approx(2 / 3)  # 3 steps per epoch: 1 - 1/3
    record = lineage(config, view, labels(24), result)
    assert record["rows"] == {"train": 17, "val": 6}
    assert record["skipped"]["train"] == {"status_decode_error": 1}
    assert record["view_spec"]["weights_id"] == "random:1"
    prediction = result.model.predict_on_batch(np.zeros((2, *spec.feature_shape), np.float32))
    assert np.isfinite(prediction).all()


def test_config_round_trip_and_validation() -> None:
    config = TrainConfig(store="s", view="v", labels="l", learning_rates=(1e-3, 1e-4))
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert config.effective_batch_size == 256
    assert TrainConfig(store="s", view="v", labels="l", head="wide").effective_learning_rates == (
        1e-4,
        1e-5,
        1e-6,
    )
    with pytest.raises(ConfigError, match="--label-noise applies"):
        TrainConfig(store="s", view="v", labels="l", target="distribution", label_noise=0.1)
    with pytest.raises(ConfigError, match="--monitor"):
        TrainConfig(store="s", view="v", labels="l", monitor="srcc")
    with pytest.raises(ConfigError, match="unknown field"):
        TrainConfig.from_dict({"store": "s", "view": "v", "labels": "l", "extra": 1})


def test_cli_errors_name_the_argument(tmp_path, capsys) -> None:
    build_encoded_view(str(tmp_path / "store"), NARROW, 8, 8, frozenset())
    base = ["--store", str(tmp_path / "store"), "--out", str(tmp_path / "run")]
    assert train.run([*base, "--view", "narrow", "--labels", str(tmp_path / "none.parquet")]) == 2
    assert "--labels" in capsys.readouterr().err
    (tmp_path / "labels.parquet").write_bytes(b"")
    assert train.run([*base, "--view", "nope", "--labels", str(tmp_path / "labels.parquet")]) == 2
    assert "--view 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        train.run([*base, "--view", "narrow", "--labels", "x", "--label-noise", "-1"])
    assert exit_info.value.code == 2 and "--label-noise" in capsys.readouterr().err
    assert evaluate.run(["--run", str(tmp_path / "missing")]) == 2
    assert "--run" in capsys.readouterr().err
    assert predict.run(["--run", "r", "--images", "i", "--save-model", "m.h5"]) == 2
    assert "--save-model" in capsys.readouterr().err
