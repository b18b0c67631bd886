"""The main job on a generated sample, end to end: sample -> download (local HTTP) -> labels ->
extract -> train -> evaluate, then a query and the metrics."""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from features import preflight
from features.cli import (
    add_common_arguments,
    cli_entry_points,
    configure_logging,
    local_path,
    positive_int,
)
from features.model.weights import IMAGENET_FILE, keras_models_dir
from pipelines import stage_argv

BANNER = "=" * 78


def choose_weights(requested: str | None) -> tuple[str, str | None]:
    """ImageNet weights when cached locally, else random:0 with a loud notice."""
    if requested:
        return requested, None
    if (keras_models_dir() / IMAGENET_FILE).is_file():
        return "imagenet", None
    notice = (
        f"{BANNER}\nNOTICE: ImageNet weights are not cached ({keras_models_dir() / IMAGENET_FILE}).\n"
        "This demo uses RANDOM weights (random:0). The pipeline, store, training and metrics are\n"
        "real, but the features are not ImageNet MLSP features. Lineage records weights_id=random:0.\n"
        f"{BANNER}"
    )
    return "random:0", notice


@contextlib.contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """Serve a folder over HTTP on 127.0.0.1 (an ephemeral port) for the download step."""

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            return None

    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the demo."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.demo",
        description="Run the main job end to end on a generated sample.",
    )
    parser.add_argument(
        "--out", type=local_path("--out"), default=Path("demo_out"), help="working folder"
    )
    parser.add_argument("--n", type=positive_int("--n"), default=64, help="good sample images")
    parser.add_argument("--weights", help="weights id (default: imagenet if cached, else random:0)")
    parser.add_argument("--epochs-per-stage", type=positive_int("--epochs-per-stage"), default=8)
    add_common_arguments(parser)
    return parser


def _steps(args: argparse.Namespace, weights: str, url: str) -> list[tuple[str, Callable[[], int]]]:
    from features import query
    from jobs import evaluate, train
    from pipelines import download, extract, labels, sample

    out, sample_dir, data = args.out, args.out / "sample", args.out / "data"
    store, run = str(out / "store"), str(out / "runs" / "narrow")
    manifest, labels_file = str(data / "manifest.parquet"), str(data / "labels.parquet")
    views = ["irnv2_mlsp_narrow", "irnv2_mlsp_wide"]
    sample_argv = ["--out", str(sample_dir), "--n", str(args.n), "--max-side", "160", "--broken"]
    download_argv = stage_argv.download_argv(
        "ava",
        str(data),
        url + "/images/{image_id}.jpg",
        label_list=str(sample_dir / "AVA.txt"),
        workers=4,
    )
    labels_argv = stage_argv.labels_argv(
        "ava",
        str(data / "raw"),
        manifest,
        labels_file,
        test_fraction=0.3,
        val_fraction=0.2,
    )
    extract_argv = stage_argv.options_argv(
        stage_argv.extract_options(manifest, store, views, weights, shard_size=16)
    )
    query_argv = ["--store", store, "--view", views[1], "--where", "status == 'ok'", "--limit", "3"]
    head_settings = ["--batch-size", "8", "--epochs-per-stage", str(args.epochs_per_stage)]
    head_settings += ["--patience", "3", "--learning-rates", "1e-3,1e-4"]
    train_argv = stage_argv.train_argv(
        store, views[0], labels_file, "narrow", run, settings=head_settings
    )
    return [
        (
            "generate the sample (AVA-format votes, a few broken files)",
            lambda: sample.run(sample_argv),
        ),
        (
            "download it from a local HTTP server (retries, checksums, resume)",
            lambda: download.run(download_argv),
        ),
        ("clean labels: MOS, distributions, seeded splits", lambda: labels.run(labels_argv)),
        (
            "extract narrow + wide MLSP features (one forward pass per image)",
            lambda: extract.run(extract_argv),
        ),
        ("query the store as pyarrow tables", lambda: query.run(query_argv)),
        ("train a narrow head, streaming from the store", lambda: train.run(train_argv)),
        ("evaluate on the test split", lambda: evaluate.run(stage_argv.evaluate_argv(run, "test"))),
    ]


def _report(run: Path) -> None:
    metrics_files = sorted(run.glob("**/metrics.json"))
    if metrics_files:
        metrics = json.loads(metrics_files[-1].read_text())
        print("metrics:", json.dumps(metrics, indent=2, sort_keys=True))
    for plot in sorted(run.glob("**/*.png")):
        print(f"plot: {plot}")


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    preflight.check_writable_folder(str(args.out), "--out")
    weights, notice = choose_weights(args.weights)
    if notice:
        print(notice, flush=True)
    (args.out / "sample").mkdir(parents=True, exist_ok=True)
    code = 0
    with serve_folder(args.out / "sample") as url:
        for number, (title, step) in enumerate(_steps(args, weights, url), start=1):
            print(f"\n--- {number}. {title} " + "-" * max(0, 66 - len(title)), flush=True)
            code = step()
            if code != 0:
                print(f"step {number} failed with exit code {code}")
                break
    if code == 0:
        _report(args.out / "runs" / "narrow")
    if notice:
        print(notice)
    print(f"\ndemo {'finished' if code == 0 else 'FAILED'}: outputs under {args.out}")
    return code


run, main = cli_entry_points(_main)


if __name__ == "__main__":
    main()
