"""pipelines.stage_argv: every builder's argv parses, with the real CLI parsers, to its inputs."""

from __future__ import annotations

from pipelines import stage_argv


def test_download_and_labels_argv_round_trip_through_the_clis() -> None:
    from pipelines import download, labels

    argv = stage_argv.download_argv(
        "ava",
        "/d",
        "http://h/{image_id}.jpg",
        label_list="/l/AVA.txt",
        split_files=("a.jpgl", "b.jpgl"),
        workers=4,
        timeout=2.5,
        retry_failed=True,
    )
    args = download.build_parser().parse_args(argv)
    assert (args.dataset, str(args.dest), args.source) == ("ava", "/d", "http://h/{image_id}.jpg")
    assert (args.list_uri, args.split_file, args.workers) == ("/l/AVA.txt", ["a.jpgl", "b.jpgl"], 4)
    assert (args.timeout, args.retries, args.retry_failed) == (2.5, 3, True)  # 3: CLI default
    argv = stage_argv.labels_argv("ava", "/r", "/m.parquet", "/o.parquet", test_fraction=0.3)
    args = labels.build_parser().parse_args(argv)
    assert (args.raw, args.manifest, args.out, args.test_fraction) == (
        "/r",
        "/m.parquet",
        "/o.parquet",
        0.3,
    )


def test_extract_options_spell_out_as_the_beam_operator_does() -> None:
    from pipelines import extract

    options = stage_argv.extract_options(
        "/m.parquet",
        "/s",
        ["irnv2_mlsp_narrow", "irnv2_mlsp_wide"],
        "random:0",
        shard_size=16,
        fail_on_errors=True,
    )
    argv = stage_argv.options_argv(options)
    assert argv == [
        "--manifest=/m.parquet",
        "--store=/s",
        "--view=irnv2_mlsp_narrow",
        "--view=irnv2_mlsp_wide",
        "--weights=random:0",
        "--shard-size=16",
        "--fail-on-errors",
    ]
    args, unknown = extract.build_parser().parse_known_args(argv)
    assert not unknown
    assert (args.view, args.shard_size, args.fail_on_errors) == (
        ["irnv2_mlsp_narrow", "irnv2_mlsp_wide"],
        16,
        True,
    )


def test_train_and_evaluate_argv_round_trip_through_the_jobs() -> None:
    from jobs import evaluate, train

    argv = stage_argv.train_argv(
        "/s",
        "irnv2_mlsp_narrow",
        "/l.parquet",
        "narrow",
        "/runs/n",
        settings=["--batch-size", "8"],
        quiet=True,
        overwrite=True,
    )
    args = train.build_parser().parse_args(argv)
    assert (args.store, args.view, args.head, args.out) == (
        "/s",
        "irnv2_mlsp_narrow",
        "narrow",
        "/runs/n",
    )
    assert (args.batch_size, args.quiet, args.overwrite) == (8, True, True)
    args = evaluate.build_parser().parse_args(stage_argv.evaluate_argv("/runs/n", "test"))
    assert (args.run, args.split, args.out, args.metrics) == ("/runs/n", "test", None, "ava")


def test_extract_options_without_weights_leave_the_cli_default() -> None:
    from pipelines import extract

    options = stage_argv.extract_options("/m.parquet", "/s", ["irnv2_mlsp_narrow"], None)
    assert "weights" not in options
    args, unknown = extract.build_parser().parse_known_args(stage_argv.options_argv(options))
    assert not unknown
    assert args.weights == extract.build_parser().get_default("weights") == "imagenet"
