"""Plan an extraction run: row allocation, view creation or validation, pending shards, summary."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from importlib import metadata
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from features.model.weights import file_sha256, imagenet_weights_path, parse_weights_id
from features.store import CommitMarker, FeatureView, ShardSpec, ViewLease, ensure_store
from schemas.errors import ConfigError, StoreError
from schemas.status import RowStatus
from schemas.tables import ROW_ALLOCATION_SCHEMA
from schemas.view_spec import PREDEFINED_VIEWS, FeatureViewSpec, InputPolicy

LOGGER = logging.getLogger(__name__)


def package_version() -> str:
    """Installed version of this package, for lineage."""
    try:
        return metadata.version("mlsp-feature-store")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def allocate_rows(manifest: pa.Table) -> pa.Table:
    """Row allocation: manifest rows sorted by image_id (independent of manifest order)."""
    ordered = manifest.sort_by([("image_id", "ascending")])
    table = ordered.append_column("row", pa.array(range(ordered.num_rows), pa.int64()))
    return table.select(ROW_ALLOCATION_SCHEMA.names).cast(ROW_ALLOCATION_SCHEMA)


def weights_sha256(
    weights_id: str,
    taps: Sequence[str] = (),
    compute_dtype: str = "float32",
    backbone: str = "inception_resnet_v2",
) -> str:
    """Digest of the weights a worker will load, computed without running the network.

    Files (including the cached ImageNet file) are hashed directly; random weights are built
    once, which also warms this process's model cache for in-process runners.

    Raises:
        ConfigError: the backbone does not take this kind of weights (e.g. imagenet for MnasNet).
    """
    from features.model.backbones import backbone_entry

    entry = backbone_entry(backbone)
    source = parse_weights_id(weights_id)
    entry.check_weights(source)
    if source.kind == "file":
        assert source.path is not None
        return file_sha256(source.path)
    if source.kind == "imagenet":
        return file_sha256(imagenet_weights_path(backbone=entry.name))
    from features.model.mlsp import backbone_weights_sha256

    return backbone_weights_sha256(weights_id, tuple(taps), compute_dtype, entry.name)


def _view_input_policy(spec: FeatureViewSpec, input_policy: InputPolicy) -> InputPolicy:
    """The run's sizing policy with the view's own minimum side (backbone and pooling decide it)."""
    try:
        return replace(input_policy, min_side=spec.input_policy.min_side)
    except ConfigError as error:
        raise ConfigError(
            f"--max-side {input_policy.max_side} for view {spec.name!r}: {error}"
        ) from None


def store_names(view_names: Sequence[str], names: Sequence[str] = ()) -> list[str]:
    """Names of the views in the store: names for the first len(names) kinds, else the kind.

    Raises:
        ConfigError: more names than views, or names that repeat.
    """
    if len(names) > len(view_names):
        raise ConfigError("--view-name is given more often than --view")
    result = [*names, *view_names[len(names) :]]
    if len(set(result)) != len(result):
        raise ConfigError(f"--view/--view-name: view names repeat: {result}")
    return result


def resolve_specs(
    view_names: Sequence[str],
    weights_id: str,
    input_policy: InputPolicy,
    variants: tuple[str, ...] = ("orig",),
    compute_dtype: str = "float32",
    names: Sequence[str] = (),
    custom: Sequence[FeatureViewSpec] = (),
) -> list[FeatureViewSpec]:
    """Specs of the requested views with weights lineage filled in.

    Args:
        view_names: predefined view kinds (keys of PREDEFINED_VIEWS).
        weights_id: weights to record and check (one id; each backbone loads its own).
        input_policy: image sizing policy (each view keeps its own min_side).
        variants: augmentation variants (all of one size: 'orig' or crops, not both).
        compute_dtype: Keras precision policy.
        names: store names for the first len(names) predefined views (default: the kind's name).
        custom: views given by --view-spec (after the predefined ones).

    Raises:
        ConfigError: an unknown view kind, repeated names, variants of mixed sizes, or weights a
            backbone does not take.
    """
    unknown = [name for name in view_names if name not in PREDEFINED_VIEWS]
    if unknown:
        raise ConfigError(f"--view {unknown[0]!r}: choose from {', '.join(PREDEFINED_VIEWS)}")
    if "orig" in variants and len(variants) > 1:
        raise ConfigError(
            "--variants: 'orig' and crops have different sizes and cannot share a forward "
            "batch; extract them into separate views (--view-name)"
        )
    chosen = [
        replace(PREDEFINED_VIEWS[kind], name=name)
        for kind, name in zip(view_names, store_names(view_names, names), strict=True)
    ]
    chosen += list(custom)
    if len({spec.name for spec in chosen}) != len(chosen):
        raise ConfigError(f"--view/--view-name: view names repeat: {[s.name for s in chosen]}")
    specs = [
        replace(
            spec,
            input_policy=_view_input_policy(spec, input_policy),
            variants=tuple(variants),
            compute_dtype=compute_dtype,
            package_version=package_version(),
        )
        for spec in chosen
    ]
    digests = {
        backbone: weights_sha256(weights_id, (), compute_dtype, backbone)
        for backbone in dict.fromkeys(spec.backbone_name for spec in specs)
    }
    return [spec.with_weights(weights_id, digests[spec.backbone_name]) for spec in specs]


def prepare_views(
    store: str,
    specs: Sequence[FeatureViewSpec],
    allocation: pa.Table,
    shard_rows: int | None,
    format_name: str,
    compression: str | None = None,
    *,
    leases: Sequence[ViewLease],
) -> list[FeatureView]:
    """Create or validate every view; they share one row allocation and shard size.

    Only a lease holder may create, validate or extend a view, so the caller takes the views'
    leases first (ViewLease.acquire_all) and passes them here.

    Args:
        store: store root.
        specs: one spec per view.
        allocation: row allocation of the manifest.
        shard_rows: rows per shard of new views (None = default; existing views keep theirs).
        format_name: a key of BACKENDS.
        compression: a key of COMPRESSIONS for new views (None = default; existing views
            keep theirs, and a different one is refused).
        leases: held leases covering every view.

    Returns:
        The views, in the order of specs.

    Raises:
        ConfigError: views with different shard sizes, or an unknown compression.
        StoreError: an existing view differs from what is asked, or a view's lease is not held.
    """
    ensure_store(store)
    held = {lease.view_path for lease in leases if lease.held}
    views = []
    for spec in specs:
        view = FeatureView(store, spec.name)
        if view.path not in held:
            raise StoreError(f"view {view.path}: its lease is not held by this run")
        view.ensure(spec, allocation, shard_rows, format_name, compression)
        views.append(view)
    if len({view.shard_rows for view in views}) > 1:
        raise ConfigError("views extracted together must share a shard size; run them separately")
    return views


def plan_shards(views: Sequence[FeatureView]) -> list[tuple[ShardSpec, tuple[str, ...]]]:
    """Shards that at least one view has not committed, in row order, each with the names of
    the views that still need it.

    One listing of each view's commits/ decides (a marker file is a commit; markers are
    validated when the run's snapshot reads them), so planning costs a LIST page per 1,000
    shards instead of a GET per committed shard.
    """
    listed = [{shard.index for shard in view.listed_shards()} for view in views]
    planned = []
    for shard in views[0].shards():
        names = tuple(
            view.name for view, done in zip(views, listed, strict=True) if shard.index not in done
        )
        if names:
            planned.append((shard, names))
    return planned


def pending_shards(views: Sequence[FeatureView]) -> list[ShardSpec]:
    """Shards that at least one view has not committed, in row order."""
    return [shard for shard, _ in plan_shards(views)]


def summarize(
    views: Sequence[FeatureView],
    run_id: str,
    wall_seconds: float,
    runner: str,
    new_markers: Mapping[int, CommitMarker] | None = None,
) -> dict[str, Any]:
    """Run summary from commit markers and the index (works on runners without metrics).

    Args:
        new_markers: the first view's markers its snapshot added after this run (they hold
            every marker of this run); None = read every marker of the view.
    """
    view = views[0]
    markers = view.committed() if new_markers is None else new_markers
    this_run = [marker for marker in markers.values() if marker.run_id == run_id]
    processed_rows = sum(marker.row_stop - marker.row_start for marker in this_run)
    index = view.committed_index()
    statuses = {
        str(item["values"]): int(item["counts"])
        for item in pc.value_counts(index.column("status")).to_pylist()
    }
    failed = index.filter(pc.not_equal(index.column("status"), RowStatus.OK.value))
    return {
        "run_id": run_id,
        "runner": runner,
        "views": [v.name for v in views],
        "rows_total": view.allocation_keys.num_rows,
        "rows_committed": index.num_rows,
        "shards_total": len(view.shards()),
        "shards_committed_this_run": len(this_run),
        "images_processed_this_run": processed_rows,
        "images_forwarded_this_run": sum(marker.images_forwarded for marker in this_run),
        "wall_seconds": round(wall_seconds, 3),
        "images_per_second": round(processed_rows / wall_seconds, 3) if wall_seconds > 0 else 0.0,
        "status_counts": dict(sorted(statuses.items())),
        "failures": [
            {"image_id": r["image_id"], "status": r["status"], "error": r["error"]}
            for r in failed.select(["image_id", "status", "error"]).to_pylist()[:50]
        ],
        "weights_id": view.spec.weights_id,
        "weights_sha256": view.spec.weights_sha256,
        # Shards of this run per device their markers record (as TensorFlow placed the work).
        "devices_used": dict(Counter(marker.device for marker in this_run)),
        # Store retries the workers recorded in this run's markers, by kind.
        "store_retries_markers": dict(
            sum((Counter(marker.store_retries) for marker in this_run), Counter())
        ),
    }
