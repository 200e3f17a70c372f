"""The command line: `pyengine info`, `pyengine train mlp` and `pyengine train cnn`."""

import subprocess
import sys

import numpy as np
import pytest

import pyengine
from pyengine import io
from pyengine.cli import main
from pyengine.models import CNN, MLP
from pyengine.train import MLPConfig, train_mlp
from pyengine.train_cnn import model_from_checkpoint


def test_info_reports_version_isa_threads_and_cuda(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"pyengine {pyengine.__version__}" in out
    assert f"isa: {pyengine.get_isa()}" in out
    assert "available: reference, baseline" in out
    assert f"threads: {pyengine.get_num_threads()}" in out
    assert "openmp: " in out and "cuda: " in out


def test_python_dash_m_is_the_same_command(tmp_path):
    # run outside the repository: from its root, `python -m` would import the source folder
    result = subprocess.run([sys.executable, "-m", "pyengine", "info"], capture_output=True, text=True,
                            check=True, cwd=tmp_path)
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


def test_train_cnn_command_reaches_97_percent_and_saves_a_checkpoint(tmp_path, capsys):
    # Measured: 0.9805 test accuracy after the default 10 epochs (440 replayed steps, about a
    # second), the same at every ISA level and thread count; 0.914 after 1 epoch, 0.961 after 2.
    checkpoint = tmp_path / "cnn.safetensors"
    assert main(["train", "cnn", "--quiet", "--checkpoint", str(checkpoint)]) == 0
    lines = capsys.readouterr().out.splitlines()
    accuracy_lines = [line for line in lines if line.startswith("test accuracy: ")]
    assert len(accuracy_lines) == 1
    value = float(accuracy_lines[0].split(": ")[1])
    assert value >= 0.97
    model = model_from_checkpoint(str(checkpoint))
    assert isinstance(model, CNN)
    from pyengine.data import load_digits
    from pyengine.train import accuracy

    data = load_digits(seed=0)
    assert accuracy(model, data.x_test, data.y_test) == pytest.approx(value, abs=1e-4)
    assert [name for name, _ in model.named_parameters()] == [
        "conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "head.weight", "head.bias"]
