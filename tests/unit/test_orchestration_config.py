"""Orchestration config, params and argv builders: validation, round trips, CLI flags (no Airflow)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from orchestration import argv as argvs
from orchestration import tasks
from orchestration.config import HeadSettings, PipelineConfig, short_view
from orchestration.params import DATAFLOW_PARAMS, config_params, param_specs
from pipelines import download, extract, labels
from schemas.errors import ConfigError

BASE: dict[str, Any] = {
    "dataset": "ava",
    "source": "http://127.0.0.1:8000/{image_id}.jpg",
    "label_list": "/data/AVA.txt",
    "data_root": "/data/ava",
}


def make(**overrides: Any) -> PipelineConfig:
    return PipelineConfig.from_dict({**BASE, **overrides})


def test_defaults_and_derived_paths() -> None:
    config = make()
    assert config.views == ("narrow", "wide")
    assert config.store_root == "/data/ava/store"
    assert config.runs_root == "/data/ava/runs"
    assert config.run_dir("irnv2_mlsp_wide") == "/data/ava/runs/wide"
    assert config.manifest_path == "/data/ava/manifest.parquet"
    assert config.beam_runner == "DirectRunner"
    assert not config.recalibrate


def test_round_trip_through_dict() -> None:
    config = make(
        views=["irnv2_mlsp_narrow"],
        store_root="gs://bucket/store/",
        runner="dataflow",
        runner_options={"region": "europe-west4", "experiments": ["use_runner_v2"]},
        head={"epochs_per_stage": 2, "learning_rates": [1e-3, 1e-4], "batch_size": 8},
        reference_run="/runs/ref",
        recalibration_range=[1, 5],
        compression="lz4",
    )
    data = config.to_dict()
    assert data["views"] == ["narrow"] and data["compression"] == "lz4"
    assert data["head"]["learning_rates"] == [1e-3, 1e-4]
    assert PipelineConfig.from_dict(data) == config
    assert config.beam_runner == "DataflowRunner"
    assert config.score_range == (1, 5)


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"dataset": "imagenet"}, "dataset"),
        ({"source": ""}, "source"),
        ({"label_list": ""}, "label_list"),
        # fields that set download flags the dataset's download would ignore
        ({"dataset": "scut-fbp5500"}, "label_list"),
        ({"dataset": "folder", "split_files": ["/t.jpgl"]}, "split_files"),
        ({"sha256": "ab" * 32}, "sha256"),
        ({"data_root": "gs://bucket/data"}, "data_root"),
        ({"data_root": "data/ava"}, "data_root"),
        ({"store_root": "store"}, "store_root"),
        ({"label_list": "AVA.txt"}, "label_list"),
        ({"views": []}, "views"),
        ({"views": ["narrow", "narrow"]}, "views"),
        ({"views": ["tiny"]}, "views"),
        ({"variants": "sideways"}, "variants"),
        ({"weights": "random:x"}, "weights"),
        ({"runner": "spark2"}, "runner"),
        ({"runner_options": {"store": "/elsewhere"}}, "runner_options"),
        ({"runner_options": {"bad name": 1}}, "runner_options"),
        ({"runner_options": {"nested": {"a": 1}}}, "runner_options"),
        ({"shard_size": 0}, "shard_size"),
        ({"max_side": True}, "max_side"),
        ({"compression": "gzip"}, "compression"),
        ({"compression": ["zstd"]}, "compression"),
        ({"runner_options": {"compression": "none"}}, "runner_options"),
        ({"head": {"epochs_per_stage": 0}}, "head.epochs_per_stage"),
        ({"head": {"learning_rates": [-1]}}, "head.learning_rates"),
        ({"head": {"target": "nima"}}, "head.target"),
        ({"head": {"epochs": 3}}, "head"),
        ({"download": {"max_failed_fraction": 2}}, "download.max_failed_fraction"),
        ({"labels": {"test_fraction": 1.0}}, "labels.test_fraction"),
        ({"labels": {"max_malformed_share": 1.0}}, "labels.max_malformed_share"),
        (
            {"dataset": "scut-fbp5500", "label_list": "", "labels": {"max_malformed_share": 0.1}},
            "labels.max_malformed_share",
        ),
        ({"evaluate_split": "holdout"}, "evaluate_split"),
        ({"unknown_param": 1}, "params"),
        (
            {"dataset": "folder", "label_list": "/x.csv", "reference_run": "/r"},
            "recalibration_range",
        ),
        ({"reference_run": "/r", "recalibration_range": [5, 1]}, "recalibration_range"),
    ],
)
def test_invalid_values_name_the_param(overrides: dict[str, Any], names: str) -> None:
    with pytest.raises(ConfigError, match=names.replace(".", r"\.")):
        make(**overrides)


def test_scut_needs_no_list_and_has_a_score_range() -> None:
    config = make(dataset="scut-fbp5500", label_list="", reference_predictions="/p.parquet")
    assert config.recalibrate
    assert argvs.recalibrate_argv(config)[-4:] == [
        "--range",
        "1.0,5.0",
        "--out",
        config.recalibration_dir,
    ]
    assert argvs.reference_predictions_path(config) == "/p.parquet"


def test_head_settings_round_trip_and_argv() -> None:
    head = HeadSettings(epochs_per_stage=1, batch_size=4, learning_rates=[0.01], retrain=True)
    assert HeadSettings.from_dict(head.to_dict()) == head
    assert "--batch-size" in head.argv() and "--learning-rates" in head.argv()
    assert "--overwrite" in argvs.train_argv(make(head=head.to_dict()), "narrow")


def _parses(parser: Any, argv: list[str]) -> Any:
    args, unknown = parser.parse_known_args(argv)
    assert unknown == []
    return args


def test_argv_is_accepted_by_the_real_clis() -> None:
    config = make(split_files=["/data/test.jpgl"])
    args = _parses(download.build_parser(), argvs.download_argv(config, retry_failed=True))
    assert args.retry_failed and args.split_file == ["/data/test.jpgl"]
    scut = make(dataset="scut-fbp5500", label_list="", sha256="ab" * 32)
    assert _parses(download.build_parser(), argvs.download_argv(scut)).sha256 == "ab" * 32
    assert str(args.dest) == config.data_root and math.isclose(args.timeout, 20.0)
    args = _parses(labels.build_parser(), argvs.labels_argv(config))
    assert args.out == config.labels_path and str(args.raw) == "/data/ava/raw"
    assert args.max_malformed_share is None  # unset: the CLI's own default applies
    tolerant = make(labels={"max_malformed_share": 0.25})
    assert _parses(labels.build_parser(), argvs.labels_argv(tolerant)).max_malformed_share == 0.25
    if tasks.module_available("jobs.evaluate"):
        from jobs import evaluate

        scut = make(dataset="scut-fbp5500", label_list="")
        args = _parses(evaluate.build_parser(), argvs.evaluate_argv(scut, "wide"))
        assert (args.metrics, args.split) == ("scut", "test")
        assert args.out == "/data/ava/runs/wide/eval_test"
    if tasks.module_available("jobs.train"):
        from jobs import train

        args = _parses(train.build_parser(), argvs.train_argv(config, "narrow"))
        assert (args.head, args.view, args.epochs_per_stage) == ("narrow", "irnv2_mlsp_narrow", 20)


def _operator_args(options: dict[str, Any]) -> list[str]:
    """What BeamHook turns pipeline options into (bool -> flag, list -> repeated)."""
    out: list[str] = []
    for key, value in options.items():
        if isinstance(value, bool):
            out += [f"--{key}"] if value else []
        elif isinstance(value, list):
            out += [f"--{key}={item}" for item in value]
        else:
            out.append(f"--{key}={value}")
    return out


def test_extract_options_reach_the_extract_cli() -> None:
    config = make(
        weights="random:0",
        shard_size=8,
        max_side=160,
        compression="none",
        fail_on_errors=True,
        runner="dataflow",
        runner_options={"direct_num_workers": 1},
    )
    options = argvs.extract_options(config, "wide")
    argv = argvs.cli_runner_argv([f"--runner={config.beam_runner}", *_operator_args(options)])
    args, beam_args = extract.build_parser().parse_known_args(argv)
    assert args.runner == "dataflow" and args.view == ["irnv2_mlsp_wide"]
    assert (args.shard_size, args.max_side, args.fail_on_errors) == (8, 160, True)
    assert args.compression == "none"
    assert "compression" not in argvs.extract_options(make(), "wide")  # the CLI default
    assert args.weights == "random:0" and args.store == config.store_root
    assert beam_args == ["--direct_num_workers=1"]


def test_cli_runner_argv_leaves_short_names_and_other_flags() -> None:
    assert argvs.cli_runner_argv(["--runner=direct", "--x=DirectRunner"]) == [
        "--runner=direct",
        "--x=DirectRunner",
    ]
    assert argvs.cli_runner_argv(["--runner=DaskRunner"]) == ["--runner=dask"]


def test_reference_predictions_are_named_after_the_reference_run() -> None:
    first = argvs.reference_predictions_path(make(reference_run="/runs/a"))
    second = argvs.reference_predictions_path(make(reference_run="/runs/b"))
    assert first != second and first.startswith("/data/ava/recalibration/")
    assert argvs.predict_argv(make(reference_run="/runs/a"))[-1] == first


def test_short_view() -> None:
    assert short_view("irnv2_mlsp_narrow") == "narrow"
    with pytest.raises(ConfigError):
        short_view("irnv2_mlsp_tiny")


def test_param_defaults_build_a_valid_config() -> None:
    specs = param_specs()
    defaults = {name: spec["default"] for name, spec in specs.items()}
    assert set(DATAFLOW_PARAMS) <= set(defaults)
    config = PipelineConfig.from_dict({**config_params(defaults), **BASE})
    assert config.views == ("narrow", "wide") and config.weights == "imagenet"
    for name in ("download", "labels", "head"):
        assert set(specs[name]["properties"]) == set(defaults[name])


def test_compression_param_lists_the_store_choices() -> None:
    from features.store import COMPRESSIONS

    assert param_specs()["compression"]["enum"] == [None, *sorted(COMPRESSIONS)]


def test_param_schemas_accept_their_defaults() -> None:
    import jsonschema  # the `test` extra
    for name, spec in param_specs().items():
        schema = {key: value for key, value in spec.items() if key not in ("default",)}
        jsonschema.validate(spec["default"], schema)
        if name == "views":
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate(["narrow", "narrow"], schema)
