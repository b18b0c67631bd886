"""Every new predefined view end to end: one extract run, queries, a 1-epoch head, evaluation."""

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
from features.model.mlsp import ExtractorKey, get_extractor
from features.store.query import FeatureStore
from features.training.evaluation import keras_predictor, load_run
from jobs import evaluate, predict, train
from pipelines import extract, labels
from pipelines.sample import write_sample
from pipelines.sample_images import AVA_LABEL_FILE
from schemas.backbones import MOBILENET_V3_FINAL_TAP
from schemas.view_spec import PREDEFINED_VIEWS
from schemas.view_syntax import parse_view_spec
from tests.conftest import RANDOM_WEIGHTS
from tests.reference import decode_reference, reference_pool, reference_spp

pytestmark = pytest.mark.slow
NEW_VIEWS = (
    "iv3_mlsp_narrow",
    "iv3_mlsp_wide",
    "irnv2_spp",
    "mnv3l_mlsp_narrow",
    "mnv3s_mlsp_narrow",
    "mnasnet_mlsp_narrow",
)
CUSTOM = "backbone=mobilenet_v3_small,pooling=spp:1,2,name=mnv3s_spp"
TRAINED = (*NEW_VIEWS, "mnv3s_spp")
SPP_MIN_SIDE = PREDEFINED_VIEWS["irnv2_spp"].input_policy.min_side


def _add_large_images(sample: Path, scratch: Path, n: int) -> None:
    """Append n images of 240-280 px (ids after the sample's) to a sample and its AVA.txt."""
    write_sample(scratch, n=n, seed=4, broken=False, min_side=SPP_MIN_SIDE + 5, max_side=280)
    lines = (sample / AVA_LABEL_FILE).read_text().splitlines()
    offset = len(lines)
    for line in (scratch / AVA_LABEL_FILE).read_text().splitlines():
        index, image_id, *rest = line.split()
        new_id = str(int(image_id) + offset)
        (scratch / "images" / f"{image_id}.jpg").rename(sample / "images" / f"{new_id}.jpg")
        lines.append(" ".join([str(int(index) + offset), new_id, *rest]))
    (sample / AVA_LABEL_FILE).write_text("".join(f"{line}\n" for line in lines))


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """24 images: 16 of 120-280 px (2 big enough for irnv2_spp) and 8 of 240-280 px, so that
    irnv2_spp has ok rows in train, val and test; all views extracted in one run."""
    work = tmp_path_factory.mktemp("backbones")
    write_sample(work / "sample", n=16, seed=3, broken=False, min_side=120, max_side=280)
    _add_large_images(work / "sample", work / "large", n=8)
    manifest = str(work / "manifest.parquet")
    files.atomic_write_parquet(
        manifest, build_manifest(entries_from_folder(work / "sample" / "images"), "sample")
    )
    label_table = str(work / "labels.parquet")
    raw = str(work / "sample")
    split = ("--test-fraction", "0.25", "--val-fraction", "0.25")
    codes = {
        "labels": labels.run(
            ["--dataset", "ava", "--raw", raw, "--manifest", manifest, "--out", label_table, *split]
        )
    }
    views = [arg for view in NEW_VIEWS for arg in ("--view", view)]
    store = str(work / "store")
    codes["extract"] = extract.run(
        [
            *("--manifest", manifest, "--store", store, *views, "--view-spec", CUSTOM),
            *("--weights", RANDOM_WEIGHTS, "--shard-size", "8"),
        ]
    )
    return {"work": work, "store": store, "labels": label_table, "codes": codes}


def _spec(view: str):
    return PREDEFINED_VIEWS.get(view) or parse_view_spec(CUSTOM)


# The standard input scalings, written here rather than taken from the product.
REFERENCE_SCALING = {
    "inception": lambda x: x / 127.5 - 1.0,
    "imagenet_mean_std": lambda x: (
        (x - np.array([123.675, 116.28, 103.53])) / np.array([58.395, 57.12, 57.375])
    ),
}


def _reference_features(spec: Any, pixels: np.ndarray) -> np.ndarray:
    """An independent computation: the Keras backbone with the view's recorded random weights,
    its tap layers' outputs fetched by the names the spec declares, pooled in numpy
    (tests/reference.py), never the product's pooling graph."""
    import keras

    from features.model.backbones import BACKBONES
    from features.model.mlsp import build_backbone
    from features.model.weights import load_weights_into, parse_weights_id

    backbone = build_backbone(spec.backbone_name)
    load_weights_into(backbone, parse_weights_id(RANDOM_WEIGHTS))
    # MobileNetV3's last tap is the model's own output (its activation layer has no stable name).
    outputs = [
        backbone.output if name == MOBILENET_V3_FINAL_TAP else backbone.get_layer(name).output
        for name in spec.taps
    ]
    scaled = REFERENCE_SCALING[BACKBONES[spec.backbone_name].preprocessing](pixels.astype(float))
    raw = keras.Model(backbone.input, outputs)(scaled[None].astype(np.float32), training=False)
    taps = [np.asarray(tap)[0] for tap in (raw if isinstance(raw, list | tuple) else [raw])]
    if spec.pooling.kind == "spp":
        return reference_spp(taps, spec.pooling.levels)
    return reference_pool(taps, spec.pooling.kind, spec.pooling.grid or (5, 5))


def test_one_run_fills_every_view_and_rows_equal_an_independent_computation(chain) -> None:
    assert chain["codes"] == {"labels": 0, "extract": 0}
    store = FeatureStore(chain["store"])
    for view in (*NEW_VIEWS, "mnv3s_spp"):
        spec = _spec(view)
        assert store.view(view).spec.identity()["pooling"] == spec.pooling.to_dict()
        table = store.table(view, filter="status == 'ok'")
        stored = table.column("features").combine_chunks().to_numpy_ndarray()
        assert stored.shape[1:] == (1, *spec.feature_shape) and np.isfinite(stored).all()
        image_id = table.column("image_id")[0].as_py()
        pixels = decode_reference(str(chain["work"] / "sample" / "images" / f"{image_id}.jpg"))
        expected = _reference_features(spec, pixels).reshape(spec.feature_shape)
        scale = float(np.abs(expected).max())
        np.testing.assert_allclose(  # float16 storage: half an ulp of the largest value
            stored[0, 0].astype(np.float64), expected, rtol=2.0**-10, atol=scale * 2.0**-11
        )


def test_spp_view_marks_images_below_its_minimum_too_small(chain) -> None:
    store = FeatureStore(chain["store"])
    spp = store.index("irnv2_spp").to_pylist()
    others = store.index("mnv3s_mlsp_narrow").to_pylist()
    assert {row["status"] for row in others} == {"ok"}
    assert len(spp) == 24 and SPP_MIN_SIDE == 235
    for row in spp:
        small = min(row["width"], row["height"]) < 235
        assert row["status"] == ("too_small" if small else "ok"), row
        if small:
            assert "network minimum 235 px" in row["error"]
    assert sum(row["status"] == "ok" for row in spp) == 2 + 8
    table = store.table("irnv2_spp", filter="status == 'too_small'")
    assert np.isnan(table.column("features").combine_chunks().to_numpy_ndarray()).all()


@pytest.fixture(scope="module")
def trained(chain) -> dict[str, Any]:
    """A 1-epoch head (the spec's kind) per view, evaluated on the test split."""
    runs, codes = {}, {}
    for view in TRAINED:
        run_dir = str(chain["work"] / "runs" / view)
        codes[f"train {view}"] = train.run(
            [
                *("--store", chain["store"], "--view", view, "--labels", chain["labels"]),
                *("--head", _spec(view).head, "--out", run_dir, "--batch-size", "8"),
                *("--epochs-per-stage", "1", "--learning-rates", "1e-3", "--quiet"),
            ]
        )
        codes[f"evaluate {view}"] = evaluate.run(["--run", run_dir, "--split", "test"])
        runs[view] = run_dir
    return {"runs": runs, "codes": codes}


def _ok_rows_per_split(chain, view: str) -> dict[str, int]:
    splits = pq.read_table(chain["labels"], columns=["image_id", "split"]).to_pylist()
    split_of = {row["image_id"]: row["split"] for row in splits}
    counts = dict.fromkeys(("train", "val", "test"), 0)
    for row in FeatureStore(chain["store"]).index(view).to_pylist():
        if row["status"] == "ok":
            counts[split_of[row["image_id"]]] += 1
    return counts


def test_each_view_trains_its_head_and_evaluates(chain, trained) -> None:
    assert set(trained["codes"].values()) == {0}, trained["codes"]
    assert _ok_rows_per_split(chain, "mnv3s_mlsp_narrow") == {"train": 13, "val": 5, "test": 6}
    assert _ok_rows_per_split(chain, "irnv2_spp") == {"train": 4, "val": 2, "test": 4}
    for view, run_dir in trained["runs"].items():
        record = json.loads((Path(run_dir) / "run.json").read_text())
        assert record["config"]["head"] == _spec(view).head
        ok_rows = _ok_rows_per_split(chain, view)
        assert record["rows"] == {"train": ok_rows["train"], "val": ok_rows["val"]}, view
        metrics = json.loads((Path(run_dir) / "eval_test" / "metrics.json").read_text())
        assert metrics["count"] == ok_rows["test"], view
        assert np.isfinite(metrics["metrics"]["plcc"]), view


def test_irnv2_spp_head_reduces_each_bin_before_the_fc_chain(trained) -> None:
    model = load_run(trained["runs"]["irnv2_spp"]).model
    assert tuple(model.get_layer("pyramid_reduce").kernel.shape) == (16928, 256)
    assert tuple(model.get_layer("pred_fc0").kernel.shape) == (50 * 256, 2048)


@pytest.mark.parametrize("view", ["mnv3s_spp", "mnasnet_mlsp_narrow", "irnv2_spp"])
def test_predict_rebuilds_backbone_pooling_and_head(chain, trained, view, tmp_path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    spec = _spec(view)
    chosen = [
        path
        for path in sorted((chain["work"] / "sample" / "images").glob("*.jpg"))
        if min(decode_reference(str(path)).shape[:2]) >= spec.input_policy.min_side
    ][:3]
    for path in chosen:
        shutil.copy(path, images / path.name)
    out = str(tmp_path / "predictions.parquet")
    run_dir = trained["runs"][view]
    assert predict.run(["--run", run_dir, "--images", str(images), "--out", out]) == 0
    table = pq.read_table(out).to_pandas().set_index("image_id")
    key = ExtractorKey(
        RANDOM_WEIGHTS, spec.taps, (("x", spec.pooling),), backbone=spec.backbone_name
    )
    direct = np.stack(
        [get_extractor(key).extract(decode_reference(str(path))[None])["x"][0] for path in chosen]
    )
    # The scoring model (Keras layers) against the extraction graph + head, both in float32.
    expected = keras_predictor(load_run(run_dir).model)(direct)
    got = table.loc[[path.stem for path in chosen], "prediction"].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert np.ptp(expected) > 100 * 1e-4 * np.abs(expected).max()  # rows are distinguishable


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--view-spec", "backbone=vgg16,pooling=gap,name=v"], "'backbone'"),
        (["--view-spec", "backbone=inception_v3,pooling=spp:1;2,name=v"], "'pooling'"),
        (["--view-spec", "backbone=inception_v3,pooling=gap,name=v,taps=mixed_5b"], "'taps'"),
        (["--view", "mnasnet_mlsp_narrow", "--weights", "imagenet"], "No Keras ImageNet"),
    ],
)
def test_bad_views_exit_2_naming_the_field(argv, named, tmp_path, capsys) -> None:
    (tmp_path / "m.parquet").write_bytes(b"")  # present: the environment checks pass
    try:  # argparse rejects a bad --view-spec itself (SystemExit 2), the rest returns 2
        code = extract.run(
            ["--manifest", str(tmp_path / "m.parquet"), "--store", str(tmp_path), *argv]
        )
    except SystemExit as exit_info:
        code = exit_info.code
    assert code == 2
    assert named in capsys.readouterr().err


def test_list_views_prints_every_predefined_view_with_its_shape(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        extract.run(["--list-views"])
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(PREDEFINED_VIEWS)
    assert "features 846400 " in lines[list(PREDEFINED_VIEWS).index("irnv2_spp")]
    assert "features 5x5x10048 " in lines[list(PREDEFINED_VIEWS).index("iv3_mlsp_wide")]
