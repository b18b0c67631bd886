"""Argv of pipelines.extract for the tests, built by pipelines.stage_argv as the DAG builds it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pipelines import stage_argv
from tests.conftest import RANDOM_WEIGHTS

NARROW = "irnv2_mlsp_narrow"
# What a Dataflow launch needs besides the runner; a dry run or a refusal reaches none of them.
DATAFLOW_FLAGS = {"project": "p", "region": "r", "temp-location": "gs://b/t"}


def extract_argv(
    manifest: str | Path,
    store: str | Path,
    *extra: str,
    views: Sequence[str] = (NARROW,),
    shard_size: int = 4,
) -> list[str]:
    """A local extraction with random weights (--name=value form, as the Beam operator passes).

    Args:
        extra: argv appended as given (runner flags, Beam options, --variants ...).

    Returns:
        The argv list.
    """
    options = stage_argv.extract_options(
        str(manifest), str(store), views, RANDOM_WEIGHTS, shard_size=shard_size
    )
    return [*stage_argv.options_argv(options), *extra]


def runner_argv(
    runner: str,
    *extra: str,
    manifest: str = "gs://b/m.parquet",
    store: str = "gs://b/s",
    views: Sequence[str] = (NARROW,),
    weights: str | None = None,
    dry_run: bool = True,
    **flags: str,
) -> list[str]:
    """A launch on a remote runner, by default a --dry-run: it prints its plan and writes nothing.

    Args:
        extra: argv appended as given (Beam options).
        weights: None leaves the CLI's default.
        dry_run: False for a launch that must be refused before any work.
        flags: runner flags by field name (sdk_container_image="...": --sdk-container-image=...);
            on dataflow they override DATAFLOW_FLAGS.

    Returns:
        The argv list.
    """
    options = stage_argv.extract_options(manifest, store, views, weights)
    options["runner"] = runner
    options.update(DATAFLOW_FLAGS if runner == "dataflow" else {})
    options.update({name.replace("_", "-"): value for name, value in flags.items()})
    options["dry-run"] = dry_run
    return [*stage_argv.options_argv(options), *extra]
