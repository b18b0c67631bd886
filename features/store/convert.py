"""Convert a view between store formats (Zarr <-> HDF5), or export it in the ava-mlsp HDF5 layout."""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import uuid
from collections.abc import Sequence

import numpy as np

from features import files, preflight
from features.cli import add_common_arguments, cli_entry_points, configure_logging, refuse_unused
from features.store.backends import COMPRESSIONS
from features.store.compaction import publish_snapshot
from features.store.fence import LeaseFence
from features.store.formats import BACKENDS
from features.store.lease import ViewLease
from features.store.root import ensure_store
from features.store.view import FeatureView
from schemas.errors import ConfigError
from schemas.view_spec import FeatureViewSpec

LOGGER = logging.getLogger(__name__)


def convert_view(
    source: FeatureView,
    target_store: str,
    format_name: str,
    name: str | None = None,
    compression: str | None = None,
) -> FeatureView:
    """Copy a view's committed shards into a new view of another format (same spec and rows).

    Markers keep their lineage (rows, ids, spec, run): none of it depends on the format or the
    compression; their features checksum is recomputed from the target's stored bytes. Shards
    are written through the target backend, index part first, marker last, and the new view
    gets a snapshot.

    Args:
        source: the view to copy.
        target_store: store root of the new view.
        format_name: a key of BACKENDS.
        name: name of the new view (None = the source's).
        compression: a key of COMPRESSIONS (None = the source view's).

    Returns:
        The new view.

    Raises:
        ConfigError: the target view exists, or an unknown compression.
        StoreError: another writer holds the target view's lease.
        LeaseLostError: the lease was lost while copying (nothing after that is committed).
    """
    spec = (
        source.spec
        if name is None
        else source.spec.__class__.from_dict({**source.spec.to_dict(), "name": name})
    )
    ensure_store(target_store)
    target = FeatureView(target_store, spec.name)
    # Only the lease holder writes a view: a second convert (or an extraction) into the same
    # view waits for nothing and fails with one line naming the holder.
    lease = ViewLease(target.path, f"convert-{uuid.uuid4().hex[:8]}")
    lease.acquire()
    try:
        if target.exists():
            raise ConfigError(f"--out {target_store}: view {spec.name!r} already exists there")
        target.fence = LeaseFence.from_dict(lease.fence_settings())
        _copy_committed(source, target, spec, format_name, compression, lease)
    finally:
        lease.release()
    return target


def _copy_committed(
    source: FeatureView,
    target: FeatureView,
    spec: FeatureViewSpec,
    format_name: str,
    compression: str | None,
    lease: ViewLease,
) -> None:
    """Create the target view and write every committed shard of source into it, fenced."""
    if compression is None and source.compression in COMPRESSIONS:  # "lzf" (HDF5): default
        compression = source.compression
    target.create(spec, source.allocation, source.shard_rows, format_name, compression)
    markers = source.committed()
    removed = files.join(source.path, "removed.json")
    if files.exists(removed):
        files.atomic_write_bytes(files.join(target.path, "removed.json"), files.read_bytes(removed))
    for shard in source.shards():
        if shard.index not in markers:
            continue
        values = source.array.read_range(shard.row_start, shard.row_stop)
        index = files.read_parquet(source.index_part_path(shard))
        target.write_shard(shard, values, index, markers[shard.index])
    target.finalize()
    publish_snapshot(target, f"convert from {source.path}", lease)
    for run in source.run_history():
        files.atomic_write_text(
            files.join(target.path, "runs", f"{run['run_id']}.json"), json.dumps(run, indent=2)
        )
    LOGGER.info(
        "converted %s (%d committed shards) to %s (%s) at %s",
        source.name,
        len(markers),
        format_name,
        compression,
        target.path,
    )


def ava_mlsp_file_name(feature_shape: Sequence[int]) -> str:
    """ava-mlsp's feature file naming, e.g. i1[orig]_lfinal_o1[5,5,16928]_r1.h5."""
    return f"i1[orig]_lfinal_o1[{','.join(str(size) for size in feature_shape)}]_r1.h5"


def export_ava_mlsp(view: FeatureView, out_dir: str) -> str:
    """One dataset per image name, in one group per variant, as ava-mlsp's H5Helper reads it.

    Only committed rows with status ok that are still in the manifest are exported. Dataset
    names are the image file names (e.g. '953619.jpg'), as in ava-mlsp's metadata CSVs.
    """
    import h5py

    index = view.committed_index()
    keep = [
        r
        for r in index.select(["row", "image_id", "status", "removed"]).to_pylist()
        if r["status"] == "ok" and not r["removed"]
    ]
    uris = dict(
        zip(
            view.allocation.column("image_id").to_pylist(),
            view.allocation.column("uri").to_pylist(),
            strict=True,
        )
    )
    path = os.path.join(out_dir, ava_mlsp_file_name(view.spec.feature_shape))
    os.makedirs(out_dir, exist_ok=True)
    handle_fd, temporary = tempfile.mkstemp(dir=out_dir, suffix=".h5.tmp")
    os.close(handle_fd)
    try:
        with h5py.File(temporary, "w") as handle:
            groups = {variant: handle.require_group(variant) for variant in view.spec.variants}
            for start in range(0, len(keep), view.shard_rows):
                block = keep[start : start + view.shard_rows]
                values = view.array.read_rows(np.array([r["row"] for r in block]))
                for position, record in enumerate(block):
                    name = os.path.basename(uris[record["image_id"]])
                    for slot, variant in enumerate(view.spec.variants):
                        groups[variant].create_dataset(name, data=values[position, slot])
            handle.attrs["spec"] = view.spec.to_json()
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the convert CLI."""
    parser = argparse.ArgumentParser(prog="python -m features.store.convert", description=__doc__)
    parser.add_argument("--store", required=True, help="source store root")
    parser.add_argument("--view", required=True, help="view to convert")
    parser.add_argument(
        "--out", required=True, help="target store root (or folder for --layout ava-mlsp)"
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--to", choices=sorted(BACKENDS), help="target store format")
    target.add_argument("--layout", choices=["ava-mlsp"], help="export in the ava-mlsp HDF5 layout")
    parser.add_argument("--view-name", help="name of the converted view (default: same name)")
    parser.add_argument(
        "--compression",
        choices=sorted(COMPRESSIONS),
        help="compression of the converted view (default: the source view's; see "
        "`python -m pipelines.extract --help`)",
    )
    add_common_arguments(parser)
    return parser


def _main(argv: Sequence[str] | None) -> int:
    from features.store.query import FeatureStore

    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    if args.layout is not None and args.compression is not None:
        raise ConfigError(f"--compression applies to --to, not to --layout {args.layout}")
    if args.layout is not None:
        refuse_unused(
            parser,
            {"--view-name": args.view_name},
            f"with --layout {args.layout}",
            "the export is a folder of files, not a named view",
        )
    preflight.check_input_folder(args.store, "--store")
    view = FeatureStore(args.store).view(args.view)
    preflight.check_writable_folder(args.out, "--out")
    if args.layout == "ava-mlsp":
        print(f"exported {args.view} to {export_ava_mlsp(view, args.out)}")
        return 0
    target = convert_view(view, args.out, args.to, args.view_name, args.compression)
    print(f"converted {args.view} ({view.format_name}) to {target.path} ({args.to})")
    return 0


run, main = cli_entry_points(_main)


if __name__ == "__main__":
    main()
