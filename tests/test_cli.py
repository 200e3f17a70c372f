"""The command line: `pyengine info` and `pyengine train mlp`."""

import subprocess
import sys

import numpy as np
import pytest

import pyengine
from pyengine import io
from pyengine.cli import main
from pyengine.models import MLP
from pyengine.train import MLPConfig, train_mlp


def test_info_reports_version_isa_threads_and_cuda(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"pyengine {pyengine.__version__}" in out
    assert f"isa: {pyengine.get_isa()}" in out
    assert "available: reference, baseline" in out
    assert f"threads: {pyengine.get_num_threads()}" in out
    assert "openmp: " in out and "cuda: " in out


def test_python_dash_m_is_the_same_command():
    result = subprocess.run([sys.executable, "-m", "pyengine", "info"], capture_output=True, text=True,
                            check=True)
    assert result.stdout.startswith(f"pyengine {pyengine.__version__}")


def test_train_mlp_reaches_95_percent_and_saves_a_checkpoint(tmp_path):
    checkpoint = tmp_path / "mlp.safetensors"
    metrics = train_mlp(MLPConfig(checkpoint=str(checkpoint), progress=False))
    assert metrics["test_accuracy"] >= 0.95
    # The checkpoint holds the trained weights: reloading reproduces the accuracy.
    model = io.load_into(MLP(64, list(MLPConfig().hidden), 10), checkpoint)
    from pyengine.data import load_digits
    from pyengine.train import accuracy

    data = load_digits(seed=0)
    assert accuracy(model, data.x_test, data.y_test) == pytest.approx(metrics["test_accuracy"])


def test_train_command_prints_the_test_accuracy_line(tmp_path, capsys):
    code = main(["train", "mlp", "--epochs", "2", "--quiet", "--checkpoint", str(tmp_path / "c.safetensors")])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    accuracy_lines = [line for line in lines if line.startswith("test accuracy: ")]
    assert len(accuracy_lines) == 1
    value = float(accuracy_lines[0].split(": ")[1])
    assert 0.0 <= value <= 1.0 and len(accuracy_lines[0].split(": ")[1]) == 6
    assert np.isfinite(value)
