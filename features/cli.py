"""Shared CLI plumbing: logging set-up, refused flag combinations, job errors as exit codes."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from schemas.errors import MLSPError

LOGGER = logging.getLogger(__name__)


class _DropKnownNoise(logging.Filter):
    """Drops Beam's import-time 'apitools not found' warning, which is irrelevant off GCP."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("apitools not found")


def configure_logging(verbose: bool = False) -> None:
    """Log to stderr, INFO (or DEBUG) for this project and WARNING for noisy libraries."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropKnownNoise())
    for noisy in (
        "apache_beam",
        "absl",
        "tensorflow",
        "h5py",
        "fsspec",
        "distributed",
        "numcodecs",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags every CLI shares."""
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def positive_int(name: str) -> Callable[[str], int]:
    """argparse type for integers >= 1 whose error names the flag."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {value}")
        return value

    return parse


def local_path(name: str) -> Callable[[str], Path]:
    """argparse type for a local path whose error names the flag: a URL is refused, where
    Path() would quietly turn 's3://b/x' into the local folder 's3:/b/x'."""

    def parse(text: str) -> Path:
        if "://" in text:
            raise argparse.ArgumentTypeError(f"{name} must be a local path, got the URL {text!r}")
        return Path(text)

    return parse


def _given(value: object) -> bool:
    """Whether a parsed flag was given: its default (None, False or []) stands for 'not given'."""
    return value is not None and value is not False and value != []


def refuse_unused(
    parser: argparse.ArgumentParser, flags: Mapping[str, object], context: str, why: str
) -> None:
    """Exit 2 with one argparse error line when flags are given that the rest of the command
    leaves unused, instead of accepting them and doing nothing with them.

    Args:
        parser: the CLI's parser (its usage is printed, as for any argparse error).
        flags: flag -> its parsed value, for the flags `context` leaves unused; each must default
            to None, False or [] so that a given value is told apart from the default.
        context: what leaves them unused, e.g. 'with --dataset ava' or 'without --view'.
        why: what the user should know, e.g. 'only scut-fbp5500 checks a zip's digest'.
    """
    given = [flag for flag, value in flags.items() if _given(value)]
    if given:
        parser.error(f"argument {', '.join(given)}: not allowed {context} ({why})")


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None) -> int:
    """Run a CLI body; job-level errors become one 'error:' line and their exit code.

    Args:
        main: the CLI body, returning an exit code.
        argv: arguments (None = sys.argv[1:]).

    Returns:
        The exit code.
    """
    try:
        return main(argv)
    except MLSPError as error:
        LOGGER.debug("job failed", exc_info=True)
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted; committed shards are kept and a re-run resumes", file=sys.stderr)
        return 130


class CliRun(Protocol):
    """`run(argv=None) -> exit code`, the in-process entry point of every CLI module."""

    def __call__(self, argv: Sequence[str] | None = None) -> int: ...


def cli_entry_points(
    body: Callable[[Sequence[str] | None], int],
) -> tuple[CliRun, Callable[[], None]]:
    """The `run(argv)` and `main()` every CLI module exposes, around its body.

    Usage, at the end of a CLI module: `run, main = cli_entry_points(_main)`.

    Args:
        body: parses argv and does the work, returning an exit code.

    Returns:
        (run, main): run(argv=None) returns the exit code (job-level errors become one
        'error:' line, see run_cli); main() is the console-script entry point and exits with it.
    """

    def run(argv: Sequence[str] | None = None) -> int:
        """Entry point; returns the exit code."""
        return run_cli(body, argv)

    def main() -> None:
        """Console-script entry point: exits with run()'s exit code."""
        sys.exit(run())

    return run, main
