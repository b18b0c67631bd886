"""kill -9 a real extraction after its first commit; re-run at once: it takes over, ends bit-exact."""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import BinaryIO

import pyarrow.parquet as pq
import pytest

from features.store.view import FeatureView
from pipelines import extract
from tests.helpers.tiny_extract import (
    SHARD_ROWS,
    VIEW,
    extract_argv,
    store_fingerprint,
    tiny_manifest,
)

PATIENCE_SECONDS = 900.0  # a hang guard only: the run builds a model on a busy machine first


class FifoGate:
    """Serves one image per shard through a named pipe, so the test decides when it is read.

    A reader blocks in open() until the test opens the pipe for writing, which tells the test
    which shard the extraction is working on; its bytes flow only when the test releases it.
    """

    def __init__(self, images: dict[int, Path]) -> None:
        self.images = images
        self.contents = {shard: path.read_bytes() for shard, path in images.items()}
        self.opened: queue.Queue[int] = queue.Queue()
        self._writers: dict[int, BinaryIO] = {}
        self._threads = []
        for shard, path in images.items():
            path.unlink()
            os.mkfifo(path)
            thread = threading.Thread(target=self._wait_for_reader, args=(shard,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _wait_for_reader(self, shard: int) -> None:
        self._writers[shard] = open(self.images[shard], "wb")  # noqa: SIM115 - see restore
        self.opened.put(shard)

    def next_opened(self, process: subprocess.Popen[bytes]) -> int:
        """The shard whose image the process opened next (fails if the process ends first)."""
        deadline = time.monotonic() + PATIENCE_SECONDS
        while time.monotonic() < deadline:
            assert process.poll() is None, "the extraction ended before it was killed"
            try:
                return self.opened.get(timeout=0.05)
            except queue.Empty:
                continue
        raise AssertionError("the extraction never opened the next gated image")

    def release(self, shard: int) -> None:
        """Let the reader of that shard's image have its bytes."""
        writer = self._writers.pop(shard)
        writer.write(self.contents[shard])
        writer.close()

    def restore(self) -> None:
        """Unblock and close every pipe, and put the real image files back."""
        readers = [os.open(path, os.O_RDONLY | os.O_NONBLOCK) for path in self.images.values()]
        for thread in self._threads:
            thread.join()
        for writer in self._writers.values():
            writer.close()
        for descriptor in readers:
            os.close(descriptor)
        for shard, path in self.images.items():
            path.unlink()
            path.write_bytes(self.contents[shard])


def _wait_for_marker(view: FeatureView, shard: int, process: subprocess.Popen[bytes]) -> None:
    marker = Path(view.marker_path(view.shards()[shard]))
    deadline = time.monotonic() + PATIENCE_SECONDS
    while not marker.exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The tiny job and the fingerprint of its clean run (which also warms the model)."""
    root = tmp_path_factory.mktemp("takeover")
    manifest = tiny_manifest(root / "sample")
    assert extract.run(extract_argv(manifest, root / "clean")) == 0
    return {"root": root, "manifest": manifest, "fingerprint": store_fingerprint(root / "clean")}


def _first_image_of_each_shard(manifest: Path) -> dict[int, Path]:
    table = pq.read_table(manifest).sort_by("image_id")  # rows follow image_id order
    uris = table.column("uri").to_pylist()
    return {shard: Path(uris[row]) for shard, row in enumerate(range(0, len(uris), SHARD_ROWS))}


def test_kill_9_then_immediate_rerun_takes_over_and_ends_bit_exact(clean, caplog) -> None:
    root, manifest = Path(clean["root"]), Path(clean["manifest"])
    store = root / "crashed"
    argv = extract_argv(manifest, store)
    gate = FifoGate(_first_image_of_each_shard(manifest))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "pipelines.extract", *argv]
    process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    view = FeatureView(str(store), VIEW)
    try:
        first = gate.next_opened(process)
        gate.release(first)
        _wait_for_marker(view, first, process)
        gate.next_opened(process)  # the run is inside its next shard, blocked reading an image
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
        gate.restore()
    lease = json.loads((store / VIEW / "lease.json").read_bytes())
    assert lease["pid"] == process.pid  # the dead run's lease is still there
    committed_before = view.committed()
    assert list(committed_before) == [first]

    with caplog.at_level(logging.WARNING, logger="features.store.lease"):
        assert extract.run(argv) == 0  # at once: no waiting for the lease to expire
    assert f"from run {lease['owner']}" in caplog.text
    assert f"its process {process.pid} is gone" in caplog.text
    (history,) = view.run_history()  # the killed run never wrote a summary
    (takeover,) = history["lease_takeovers"]
    assert takeover["from_run"] == lease["owner"] and takeover["from_pid"] == process.pid
    assert view.committed()[first] == committed_before[first]  # the committed shard untouched
    assert store_fingerprint(store) == clean["fingerprint"]
