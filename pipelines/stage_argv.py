"""Argv of each stage CLI (download, labels, extract, train, evaluate), built from plain values.

The one place that knows the stage CLIs' flag names: orchestration/argv.py fills these from a
PipelineConfig, pipelines/demo.py from its own settings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# Download flags only some datasets read (flag -> those datasets); pipelines.download refuses
# them for any other dataset, and orchestration's config refuses the fields that set them.
DOWNLOAD_DATASET_FLAGS: dict[str, frozenset[str]] = {
    "--list": frozenset({"ava", "folder"}),
    "--split-file": frozenset({"ava"}),
    "--sha256": frozenset({"scut-fbp5500"}),
}


def _optional(flags: Mapping[str, Any]) -> list[str]:
    """--flag value pairs for the values that are not None (floats in repr, round-trip exact)."""
    argv: list[str] = []
    for flag, value in flags.items():
        if value is not None:
            argv += [flag, repr(value) if isinstance(value, float) else str(value)]
    return argv


def download_argv(
    dataset: str,
    dest: str,
    source: str,
    *,
    label_list: str | None = None,
    split_files: Sequence[str] = (),
    sha256: str | None = None,
    workers: int | None = None,
    retries: int | None = None,
    timeout: float | None = None,
    backoff: float | None = None,
    retry_failed: bool = False,
) -> list[str]:
    """Argv of `pipelines.download` (None leaves the CLI's default).

    Returns:
        The argv list.
    """
    argv = ["--dataset", dataset, "--dest", dest, "--source", source]
    argv += _optional({"--workers": workers, "--retries": retries})
    argv += _optional({"--timeout": timeout, "--backoff": backoff})
    argv += _optional({"--list": label_list})
    for split_file in split_files:
        argv += ["--split-file", split_file]
    argv += _optional({"--sha256": sha256})
    return [*argv, "--retry-failed"] if retry_failed else argv


def labels_argv(
    dataset: str,
    raw: str,
    manifest: str,
    out: str,
    *,
    seed: int | None = None,
    test_fraction: float | None = None,
    val_fraction: float | None = None,
    max_malformed_share: float | None = None,
) -> list[str]:
    """Argv of `pipelines.labels` (raw label files and the download's manifest).

    Returns:
        The argv list.
    """
    argv = ["--dataset", dataset, "--raw", raw, "--manifest", manifest, "--out", out]
    return argv + _optional(
        {
            "--seed": seed,
            "--test-fraction": test_fraction,
            "--val-fraction": val_fraction,
            "--max-malformed-share": max_malformed_share,
        }
    )


def extract_options(
    manifest: str,
    store: str,
    views: Sequence[str],
    weights: str | None,
    *,
    shard_size: int | None = None,
    max_side: int | None = None,
    compression: str | None = None,
    variants: str | None = None,
    fail_on_errors: bool = False,
) -> dict[str, Any]:
    """Options of `pipelines.extract` as flag name -> value (the Beam operator's form).

    {"shard-size": 64, "view": ["a", "b"], "fail-on-errors": True} stands for
    --shard-size=64 --view=a --view=b --fail-on-errors; options_argv spells it out.
    None leaves the CLI's default (weights: imagenet).

    Returns:
        The options dict (no runner).
    """
    options: dict[str, Any] = {"manifest": manifest, "store": store, "view": list(views)}
    optional = {
        "weights": weights,
        "shard-size": shard_size,
        "max-side": max_side,
        "compression": compression,
        "variants": variants,
    }
    options.update({key: value for key, value in optional.items() if value is not None})
    if fail_on_errors:
        options["fail-on-errors"] = True
    return options


def options_argv(options: Mapping[str, Any]) -> list[str]:
    """Argv from an options dict, as the Beam operator builds it (lists repeat the flag).

    Returns:
        ["--name=value", ...]; True is a bare --name, False and None are left out.
    """
    argv: list[str] = []
    for name, value in options.items():
        if value is True:
            argv.append(f"--{name}")
        elif value is not False and value is not None:
            values = value if isinstance(value, list | tuple) else [value]
            argv += [f"--{name}={item}" for item in values]
    return argv


def train_argv(
    store: str,
    view: str,
    labels: str,
    head: str,
    out: str,
    *,
    settings: Sequence[str] = (),
    quiet: bool = False,
    overwrite: bool = False,
) -> list[str]:
    """Argv of `jobs.train`: one head on one view.

    Args:
        settings: training flags as argv (--epochs-per-stage 8 ...).

    Returns:
        The argv list.
    """
    argv = ["--store", store, "--view", view, "--labels", labels, "--head", head, "--out", out]
    argv += ["--quiet"] if quiet else []
    argv += list(settings)
    return [*argv, "--overwrite"] if overwrite else argv


def evaluate_argv(
    run: str, split: str, *, metrics: str | None = None, out: str | None = None
) -> list[str]:
    """Argv of `jobs.evaluate` for one run folder.

    Returns:
        The argv list.
    """
    return ["--run", run, "--split", split, *_optional({"--metrics": metrics, "--out": out})]
