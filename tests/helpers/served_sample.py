"""The Airflow tests' dataset: 12 generated JPEGs over HTTP on 127.0.0.1, the first failing first."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from benchmarks.fault_server import FaultServer, Route


@contextlib.contextmanager
def served_sample(folder: Path, first_image_failures: int) -> Iterator[tuple[FaultServer, Path]]:
    """Write the sample under folder and serve its images; the first answers 500 that many
    times before serving (what a task's or the download's retries must get past).

    Yields:
        The server and the sample folder (images/ and the sample's label files).
    """
    from pipelines.sample import write_sample

    write_sample(folder, n=12, seed=11, broken=False, min_side=80, max_side=160)
    with FaultServer() as server:
        for index, image in enumerate(sorted((folder / "images").iterdir())):
            faults = ["500"] * first_image_failures if index == 0 else []
            server.routes[image.name] = Route(image.read_bytes(), faults=faults)
        yield server, folder
