"""Checkpoints are safetensors files that PyTorch reads."""

import numpy as np
import pytest

import pyengine
from pyengine import Tensor, io, nn


def _model(seed):
    pyengine.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.GELU("tanh"), nn.LayerNorm(7), nn.Linear(7, 3))


def test_round_trip_restores_every_parameter(tmp_path):
    source, target = _model(1), _model(2)
    path = tmp_path / "model.safetensors"
    io.save(source, path, metadata={"note": "test"})
    io.load_into(target, path)
    for (name, a), (_, b) in zip(source.named_parameters(), target.named_parameters()):
        np.testing.assert_array_equal(a.data, b.data, err_msg=name)


def test_load_rejects_missing_keys(tmp_path):
    path = tmp_path / "partial.safetensors"
    io.save({"0.weight": np.zeros((7, 5), np.float32)}, path)
    with pytest.raises(KeyError):
        io.load_into(_model(0), path)


def test_pytorch_reads_the_file_and_computes_the_same_outputs(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    model = _model(3)
    path = tmp_path / "model.safetensors"
    io.save(model, path)
    reference = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.GELU(approximate="tanh"),
                                    torch.nn.LayerNorm(7), torch.nn.Linear(7, 3))
    reference.load_state_dict(load_file(str(path)))
    x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model(Tensor(x)).numpy(), expected, rtol=1e-5, atol=1e-5)
