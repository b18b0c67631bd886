"""End to end on the generated learnable sample: labels -> extract -> train -> evaluate -> predict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from features import files
from features.download.manifest import build_manifest, entries_from_folder
from features.store.query import FeatureStore
from features.training.evaluation import keras_predictor, load_run
from jobs import evaluate, predict, train
from pipelines import extract, labels
from pipelines.sample import write_sample
from tests.conftest import RANDOM_WEIGHTS
from tests.reference import decode_reference

pytestmark = pytest.mark.slow
VIEW = "irnv2_mlsp_narrow"
SAMPLE_IMAGES, SAMPLE_SEED = 64, 3
# Test-split SRCC measured with exactly this chain (64 images <= 128 px, random:0 backbone,
# test 30 % / val 20 % -> 21 test images, batch 8, stages 1e-3 and 1e-4 of <= 8 epochs,
# patience 3), final input pipeline: sample seed 3: 0.575, seed 4: 0.635, seed 5: 0.734
# (an earlier shuffle implementation: 0.614, 0.592, 0.627; ridge regression on the same kind of
# features: ~0.5). With 21 test images a chance predictor's SRCC has sd ~0.22, so 0.4 is clearly
# above chance (p ~0.04) yet ~0.17 below the lowest measured run.
MIN_TEST_SRCC = 0.4


def run_chain(work: Path, sample_seed: int = SAMPLE_SEED, n: int = SAMPLE_IMAGES) -> dict[str, Any]:
    """Generate, label, extract, train and evaluate; returns paths and exit codes."""
    write_sample(work / "sample", n=n, seed=sample_seed, broken=False, min_side=80, max_side=128)
    manifest = str(work / "manifest.parquet")
    files.atomic_write_parquet(
        manifest, build_manifest(entries_from_folder(work / "sample" / "images"), "sample")
    )
    label_table = str(work / "labels.parquet")
    codes = {
        "labels": labels.run(
            [
                "--dataset",
                "ava",
                "--raw",
                str(work / "sample"),
                "--manifest",
                manifest,
                "--out",
                label_table,
                "--test-fraction",
                "0.3",
                "--val-fraction",
                "0.2",
            ]
        ),
        "extract": extract.run(
            [
                "--manifest",
                manifest,
                "--store",
                str(work / "store"),
                "--view",
                VIEW,
                "--weights",
                RANDOM_WEIGHTS,
                "--shard-size",
                "16",
            ]
        ),
    }
    run_dir = str(work / "runs" / "narrow")
    codes["train"] = train.run(
        [
            "--store",
            str(work / "store"),
            "--view",
            VIEW,
            "--labels",
            label_table,
            "--head",
            "narrow",
            "--out",
            run_dir,
            "--batch-size",
            "8",
            "--epochs-per-stage",
            "8",
            "--patience",
            "3",
            "--learning-rates",
            "1e-3,1e-4",
            "--quiet",
        ]
    )
    codes["evaluate"] = evaluate.run(["--run", run_dir, "--split", "test"])
    return {"work": work, "run": run_dir, "store": str(work / "store"), "codes": codes}


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_chain(tmp_path_factory.mktemp("heads"))


def test_every_step_succeeds_and_writes_its_outputs(chain) -> None:
    assert chain["codes"] == {"labels": 0, "extract": 0, "train": 0, "evaluate": 0}
    run_dir = Path(chain["run"])
    for name in ("model.keras", "run.json", "history.csv", "curves.png"):
        assert (run_dir / name).stat().st_size > 0, name
    record = json.loads((run_dir / "run.json").read_text())
    assert record["view_spec"]["weights_id"] == RANDOM_WEIGHTS
    assert record["label_version"].startswith("lv-") and record["seed"] == 0
    # The extraction run published snapshot 1 at its end; training read exactly that.
    assert record["store_snapshot"] == {"snapshot": 1, "shards_after": []}
    history = (run_dir / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,stage,learning_rate") and len(history) >= 3


def test_narrow_head_beats_chance_on_the_test_split(chain) -> None:
    out = Path(chain["run"]) / "eval_test"
    metrics = json.loads((out / "metrics.json").read_text())
    predictions = pq.read_table(out / "predictions.parquet")
    assert predictions.column_names == ["image_id", "prediction"]
    assert predictions.num_rows == metrics["count"] >= 10
    assert metrics["metrics"]["srcc"] > MIN_TEST_SRCC, metrics
    assert (out / "scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tta_on_a_single_variant_view_is_refused(
    chain, capsys: pytest.CaptureFixture[str]
) -> None:
    out = Path(chain["work"]) / "tta"
    assert evaluate.run(["--run", chain["run"], "--tta", "--out", str(out)]) == 2
    assert "--tta: view 'irnv2_mlsp_narrow' stores one variant ['orig']" in capsys.readouterr().err
    assert not out.exists()


def test_prediction_from_images_equals_head_on_stored_features(chain) -> None:
    images = Path(chain["work"]) / "few"
    images.mkdir()
    chosen = sorted((Path(chain["work"]) / "sample" / "images").glob("*.jpg"))[:5]
    for path in chosen:
        shutil.copy(path, images / path.name)
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    out = str(Path(chain["work"]) / "preds.parquet")
    model_path = str(Path(chain["work"]) / "scorer.keras")
    assert (
        predict.run(
            [
                "--run",
                chain["run"],
                "--images",
                str(images),
                "--out",
                out,
                "--save-model",
                model_path,
            ]
        )
        == 0
    )
    table = pq.read_table(out).to_pandas().set_index("image_id")
    assert table.loc["broken", "status"] == "decode_error"
    assert np.isnan(table.loc["broken", "prediction"])
    ids = [path.stem for path in chosen]
    stored = FeatureStore(chain["store"]).table(VIEW, ids=ids)
    features = stored.column("features").combine_chunks().to_numpy_ndarray()[:, 0]
    expected = keras_predictor(load_run(chain["run"]).model)(features)
    # Stored features are float16 (relative rounding <= 2^-11), the images path computes them
    # in float32: measured max |difference| 1.7e-5 over these 5 images, so 1e-3 bounds fp16
    # rounding with a wide margin while any misalignment or wrong pooling would be ~0.1-1.
    np.testing.assert_allclose(table.loc[ids, "prediction"].to_numpy(), expected, atol=1e-3)
    from features.training.prediction import compiled_forward
    from features.training.run_outputs import load_keras_model

    served = compiled_forward(load_keras_model(model_path))
    pixels = decode_reference(str(chosen[0]))[None]
    served_score = float(np.asarray(served(pixels)).reshape(-1)[0])
    assert served_score == pytest.approx(table.loc[ids[0], "prediction"], abs=1e-4)
