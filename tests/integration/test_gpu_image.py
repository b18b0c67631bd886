"""The GPU image's requirements resolve (pip install --dry-run) with every documented backend."""

from __future__ import annotations

import json
import subprocess
import sys

import apache_beam
import pytest

from tests.helpers import gpu_image


@pytest.fixture(scope="module")
def resolved() -> dict[str, str]:
    """What pip would install for the image, name -> version, without installing it."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",  # the test environment's packages must not count as resolved
            "--quiet",
            "--report",
            "-",
            "-r",
            str(gpu_image.IMAGE_REQUIREMENTS),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    return {
        gpu_image.canonical(item["metadata"]["name"]): item["metadata"]["version"]
        for item in report["install"]
    }


@pytest.mark.slow
def test_the_gpu_image_resolves_with_every_documented_backend(resolved: dict[str, str]) -> None:
    pinned = gpu_image.image_pins()
    for name, line in pinned.items():  # every pin resolves to itself: no conflict
        assert resolved.get(name) == gpu_image.pinned_version(line), (name, resolved.get(name))
    backends = gpu_image.documented_fsspec_backends()
    assert backends and set(backends) <= set(resolved)
    assert "tensorflow-cpu" not in resolved  # one TensorFlow: the CUDA build
    assert any(name.startswith("nvidia-") for name in resolved)  # its CUDA wheels
    assert resolved["apache-beam"] == apache_beam.__version__
