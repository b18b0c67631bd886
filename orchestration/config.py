"""Validated DAG-run configuration and the argv of every CLI the DAG calls (pure, no Airflow)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from orchestration.settings import (
    DownloadSettings,
    HeadSettings,
    LabelSettings,
    Settings,
    build_settings,
    is_int,
    is_number,
    require,
)
from pipelines.runners import RUNNERS
from pipelines.stage_argv import DOWNLOAD_DATASET_FLAGS
from schemas.view_spec import PREDEFINED_VIEWS

DATASETS = ("ava", "scut-fbp5500", "folder")
# Short names of the IRv2 views; every other predefined view is named in full.
VIEWS: dict[str, str] = {"narrow": "irnv2_mlsp_narrow", "wide": "irnv2_mlsp_wide"}
VIEWS.update({name: name for name in PREDEFINED_VIEWS if name not in VIEWS.values()})
DEFAULT_VIEWS = ("narrow", "wide")
# Score scale of each dataset's labels: the clipping range of a recalibrated label.
SCORE_RANGES: dict[str, tuple[float, float]] = {"ava": (1.0, 10.0), "scut-fbp5500": (1.0, 5.0)}
# Metric set of `jobs.evaluate` for each dataset.
METRIC_SETS: dict[str, str] = {"ava": "ava", "scut-fbp5500": "scut", "folder": "ava"}
# Config fields that become dataset-specific download flags.
DOWNLOAD_FIELDS = {"label_list": "--list", "split_files": "--split-file", "sha256": "--sha256"}
# Flags the DAG sets itself; runner_options may not override them.
RESERVED_OPTIONS = frozenset(
    {"manifest", "store", "view", "weights", "runner", "variants"}
    | {"shard-size", "max-side", "compression"}
)
# Path params a task would otherwise resolve against its working directory.
LOCAL_OR_URL_PATHS = (
    "data_root",
    "store_root",
    "runs_root",
    "label_list",
    "reference_run",
    "reference_predictions",
)
_OPTION_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def join(base: str, *parts: str) -> str:
    """Join a local path or URL with '/' (gs://bucket/a + b -> gs://bucket/a/b)."""
    return "/".join([base.rstrip("/"), *(part.strip("/") for part in parts)])


def _check_weights(weights: str) -> None:
    require(isinstance(weights, str) and weights != "", "weights", "must be a non-empty string")
    if weights.startswith("random:"):
        require(re.fullmatch(r"random:\d+", weights) is not None, "weights", "use 'random:SEED'")


def _check_variants(variants: str) -> None:
    require(isinstance(variants, str) and variants != "", "variants", "must be a non-empty string")
    from features.extraction.variants import parse_variants

    parse_variants(variants)  # raises ConfigError naming the bad variant


def _check_compression(compression: Any) -> None:
    if compression is None:
        return
    from features.store import COMPRESSIONS  # lazy: DAG parsing imports no pyarrow

    known = isinstance(compression, str) and compression in COMPRESSIONS
    require(known, "compression", f"null or one of {sorted(COMPRESSIONS)}")


def _check_runner_options(options: Mapping[str, Any]) -> None:
    for key, value in options.items():
        require(
            isinstance(key, str) and _OPTION_NAME.match(key) is not None,
            "runner_options",
            f"bad option name {key!r}",
        )
        require(key not in RESERVED_OPTIONS, "runner_options", f"{key!r} is set by the DAG")
        scalar = (str, int, float, bool)
        ok = isinstance(value, scalar) or (
            isinstance(value, list) and all(isinstance(v, scalar) for v in value)
        )
        require(ok, "runner_options", f"{key!r} must be a scalar or a list of scalars")


def _optional_positive(value: Any, name: str) -> None:
    require(value is None or (is_int(value) and value >= 1), name, "must be null or >= 1")


@dataclass(frozen=True)
class PipelineConfig:
    """One DAG run's configuration: what to fetch, where to write, how to run and train.

    Attributes:
        dataset: 'ava', 'scut-fbp5500' or 'folder'.
        source: image source for `pipelines.download` (URL template, URL prefix, folder, archives).
        label_list: AVA.txt (ava) or CSV image_id,score[,split] (folder); refused for SCUT.
        split_files: official split lists (AVA .jpgl).
        sha256: expected digest of the SCUT-FBP5500 zip ('' = not checked).
        data_root: local folder for downloads, manifest, labels (and runs by default).
        store_root: feature store root, local or URL ('' = DATA_ROOT/store).
        runs_root: head runs root, local or URL ('' = DATA_ROOT/runs).
        views: view names (keys of VIEWS: 'narrow', 'wide', or another predefined view's full
            name, e.g. 'mnv3l_mlsp_narrow'), one extract/train/evaluate chain each.
        variants: augmentation variants ('orig', 'train8', 'tta18' or a list).
        weights: 'imagenet', a weights file or 'random:SEED'.
        runner: extract CLI runner name ('direct', 'dataflow', ...).
        runner_options: extra Beam pipeline options, e.g. {"direct_num_workers": 2}.
        shard_size: rows per shard of a new view (None = the CLI default).
        max_side: downscale images above this side (None = original resolution).
        compression: features compression of a new view (None = the CLI default, lz4).
        fail_on_errors: fail extraction when any row is not ok.
        evaluate_split: split the evaluation reports on.
        reference_run: run folder of a reference model; recalibrate labels against it.
        reference_predictions: Parquet image_id, prediction of the reference model (skips
            predicting with reference_run).
        recalibration_range: clip range of recalibrated labels (None = the dataset's scale).
    """

    dataset: str
    source: str
    data_root: str
    label_list: str = ""
    split_files: tuple[str, ...] = ()
    sha256: str = ""
    store_root: str = ""
    runs_root: str = ""
    views: tuple[str, ...] = DEFAULT_VIEWS
    variants: str = "orig"
    weights: str = "imagenet"
    runner: str = "direct"
    runner_options: Mapping[str, Any] | None = None
    shard_size: int | None = None
    max_side: int | None = None
    compression: str | None = None
    fail_on_errors: bool = False
    download: DownloadSettings = field(default_factory=DownloadSettings)
    labels: LabelSettings = field(default_factory=LabelSettings)
    head: HeadSettings = field(default_factory=HeadSettings)
    evaluate_split: str = "test"
    reference_run: str = ""
    reference_predictions: str = ""
    recalibration_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        setter = object.__setattr__
        setter(self, "split_files", tuple(self.split_files or ()))
        views = (self.views,) if isinstance(self.views, str) else tuple(self.views or ())
        setter(self, "views", tuple(short_view(view) for view in views))
        setter(self, "runner_options", dict(self.runner_options or {}))
        setter(self, "store_root", self.store_root or join(self.data_root, "store"))
        setter(self, "runs_root", self.runs_root or join(self.data_root, "runs"))
        if self.recalibration_range is not None:
            setter(self, "recalibration_range", tuple(self.recalibration_range))
        self._validate_data()
        self._validate_run()

    def _validate_data(self) -> None:
        require(self.dataset in DATASETS, "dataset", f"choose one of {DATASETS}")
        require(isinstance(self.source, str) and bool(self.source), "source", "is required")
        require(bool(self.data_root), "data_root", "is required")
        require(
            "://" not in self.data_root,
            "data_root",
            "must be a local (or mounted) folder: pipelines.download writes local files",
        )
        for name in LOCAL_OR_URL_PATHS:  # tasks run in whatever folder the executor starts them
            path = getattr(self, name)
            ok = not path or "://" in path or os.path.isabs(path)
            require(ok, name, f"{path!r} is relative: give an absolute path or a URL")
        needs_list = self.dataset in DOWNLOAD_DATASET_FLAGS["--list"]
        require(bool(self.label_list) or not needs_list, "label_list", f"needed for {self.dataset}")
        for name, flag in DOWNLOAD_FIELDS.items():  # never passed to a download that ignores it
            only = " or ".join(sorted(readers := DOWNLOAD_DATASET_FLAGS[flag]))
            ok = not getattr(self, name) or self.dataset in readers
            require(ok, name, f"not used for {self.dataset} (only {only}); leave it empty")
        require(
            self.labels.max_malformed_share is None or self.dataset == "ava",
            "labels.max_malformed_share",
            f"not used for {self.dataset} (only ava reads AVA.txt); leave it unset",
        )
        require(
            self.evaluate_split in ("train", "val", "test"), "evaluate_split", "train, val or test"
        )

    def _validate_run(self) -> None:
        require(len(self.views) > 0, "views", f"choose at least one of {sorted(VIEWS)}")
        require(len(set(self.views)) == len(self.views), "views", "views repeat")
        _check_variants(self.variants)
        _check_weights(self.weights)
        require(self.runner in RUNNERS, "runner", f"choose one of {sorted(RUNNERS)}")
        _check_runner_options(self.runner_options or {})
        _optional_positive(self.shard_size, "shard_size")
        _optional_positive(self.max_side, "max_side")
        _check_compression(self.compression)
        require(isinstance(self.fail_on_errors, bool), "fail_on_errors", "must be true or false")
        if self.recalibrate:
            lo_hi = self.score_range
            require(lo_hi is not None, "recalibration_range", f"needed for {self.dataset}")
            lo, hi = lo_hi  # type: ignore[misc]
            require(is_number(lo) and is_number(hi) and lo < hi, "recalibration_range", "[lo, hi]")

    @property
    def recalibrate(self) -> bool:
        """Whether this run recalibrates labels against a reference model."""
        return bool(self.reference_run or self.reference_predictions)

    @property
    def score_range(self) -> tuple[float, float] | None:
        """Clip range of recalibrated labels: the explicit one, else the dataset's scale."""
        return self.recalibration_range or SCORE_RANGES.get(self.dataset)

    @property
    def beam_runner(self) -> str:
        """Beam's name of the runner (what the Beam operator expects)."""
        return RUNNERS[self.runner].beam_name

    @property
    def manifest_path(self) -> str:
        """DATA_ROOT/manifest.parquet, written by the download."""
        return join(self.data_root, "manifest.parquet")

    @property
    def downloads_path(self) -> str:
        """DATA_ROOT/downloads.parquet, the download status table."""
        return join(self.data_root, "downloads.parquet")

    @property
    def labels_path(self) -> str:
        """DATA_ROOT/labels.parquet."""
        return join(self.data_root, "labels.parquet")

    @property
    def recalibration_dir(self) -> str:
        """DATA_ROOT/recalibration: calibration.json, recalibrated labels, plot."""
        return join(self.data_root, "recalibration")

    def run_dir(self, view: str) -> str:
        """RUNS_ROOT/VIEW: the head run of one view (short name)."""
        return join(self.runs_root, short_view(view))

    def eval_dir(self, view: str) -> str:
        """RUNS_ROOT/VIEW/eval_SPLIT: metrics.json, predictions.parquet, scatter.png."""
        return join(self.run_dir(view), f"eval_{self.evaluate_split}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (nested settings as dicts); from_dict() inverts it."""
        data = {item.name: getattr(self, item.name) for item in fields(self)}
        for name in ("download", "labels", "head"):
            data[name] = data[name].to_dict()
        data["split_files"] = list(self.split_files)
        data["views"] = list(self.views)
        data["runner_options"] = dict(self.runner_options or {})
        rng = self.recalibration_range
        data["recalibration_range"] = None if rng is None else list(rng)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PipelineConfig:
        """Build and validate from DAG params or to_dict() output.

        Args:
            data: flat params with nested 'download', 'labels' and 'head' objects.

        Returns:
            The validated configuration.

        Raises:
            ConfigError: a missing, unknown or invalid value; the message names it.
        """
        data = dict(data)
        for name, settings_cls in NESTED_SETTINGS.items():
            value = data.get(name)
            if not isinstance(value, settings_cls):
                require(value is None or isinstance(value, Mapping), name, "must be an object")
                data[name] = settings_cls.from_dict(value, name)
        for name in ("dataset", "source", "data_root"):
            require(name in data, name, "is required")
        return build_settings(cls, data, "params")


NESTED_SETTINGS: dict[str, type[Settings]] = {
    "download": DownloadSettings,
    "labels": LabelSettings,
    "head": HeadSettings,
}


def short_view(view: str) -> str:
    """Short view name: 'narrow' or 'irnv2_mlsp_narrow' -> 'narrow'.

    Args:
        view: a short or full view name.

    Returns:
        The short name (a key of VIEWS).

    Raises:
        ConfigError: an unknown view.
    """
    short = {full: name for name, full in VIEWS.items()}.get(view, view)
    require(short in VIEWS, "views", f"unknown view {view!r}; choose from {sorted(VIEWS)}")
    return short
