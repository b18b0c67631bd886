"""Beam operator's py_file: runs pipelines.extract, mapping Beam runner names to the CLI's."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
_ROOT = str(Path(__file__).resolve().parents[1])


def main() -> None:
    """Run the extract CLI with the operator's argv; exit with its exit code."""
    # Run as a script, sys.path[0] is orchestration/: drop it (its modules would shadow
    # top-level names) and make the project importable even without an install.
    sys.path[:] = [path for path in sys.path if path != _HERE]
    if _ROOT not in sys.path:
        sys.path.append(_ROOT)
    from orchestration.argv import cli_runner_argv
    from pipelines.extract import run

    # The Beam operator finds the Dataflow job id in this logger's INFO lines.
    logging.getLogger("apache_beam.runners.dataflow.internal.apiclient").setLevel(logging.INFO)
    sys.exit(run(cli_runner_argv(sys.argv[1:])))


if __name__ == "__main__":
    main()
