"""benchmarks.gpu_check refuses, with one line and nothing written, where it cannot measure."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import gpu_check


def _errors(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def test_without_an_nvidia_gpu_it_refuses_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(gpu_check.shutil, "which", lambda name: None)  # as on a CPU host
    assert gpu_check.gpu_names() == []
    assert gpu_check.run(["--out", str(tmp_path / "out")]) == 1
    (line,) = _errors(capsys)
    assert "no NVIDIA GPU on this machine" in line
    assert not (tmp_path / "out").exists()


def test_a_gpu_tensorflow_cannot_use_is_named_and_nothing_installed_without_consent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    installs: list[str] = []
    monkeypatch.setattr(gpu_check, "gpu_names", lambda: ["GPU 0: NVIDIA H200 (UUID: x)"])
    monkeypatch.setattr(gpu_check, "_tensorflow_gpus", lambda: 0)
    monkeypatch.setattr(gpu_check, "_install_cuda_tensorflow", lambda: installs.append("pip"))
    assert gpu_check.run(["--no-install", "--out", str(tmp_path / "out")]) == 1
    (line,) = _errors(capsys)
    assert "GPU 0: NVIDIA H200" in line and "tensorflow[and-cuda]" in line
    assert installs == []
    assert gpu_check.run(["--out", str(tmp_path / "out")]) == 1  # installs once, still no GPU
    assert installs == ["pip"]
    assert "TensorFlow sees no GPU" in _errors(capsys)[0]
