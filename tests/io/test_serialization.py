"""pyengine.save / pyengine.load: nested state dicts in one safetensors file."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import pyengine as pe
from pyengine import Tensor, nn
from pyengine.io import serialization
from pyengine.optim import SGD

F32 = np.float32


def _model(seed: int):
    pe.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.GELU("tanh"), nn.LayerNorm(7), nn.Linear(7, 3))


def _trained_optimizer(model):
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(0)
    for p in model.parameters():
        p.grad = rng.standard_normal(p.shape).astype(F32)
    opt.step()
    return opt


def _assert_same_tree(loaded, original, where="root"):
    """Same structure and types; arrays and Tensors come back as Tensors with equal data."""
    if isinstance(original, (Tensor, np.ndarray)):
        assert isinstance(loaded, Tensor), where
        data = original.data if isinstance(original, Tensor) else original
        assert loaded.dtype == data.dtype and loaded.shape == data.shape, where
        np.testing.assert_array_equal(loaded.numpy(), data, err_msg=where)
    elif isinstance(original, dict):
        assert isinstance(loaded, dict) and list(loaded) == list(original), where
        for key in original:
            _assert_same_tree(loaded[key], original[key], f"{where}.{key}")
    elif isinstance(original, (list, tuple)):
        assert type(loaded) is type(original) and len(loaded) == len(original), where
        for i, (a, b) in enumerate(zip(loaded, original)):
            _assert_same_tree(a, b, f"{where}[{i}]")
    else:
        assert type(loaded) is type(original) and loaded == original, where


def test_flat_state_dict_round_trip(tmp_path):
    source, target = _model(1), _model(2)
    path = tmp_path / "model.safetensors"
    pe.save(source.state_dict(), path)
    loaded = pe.load(path)
    _assert_same_tree(loaded, dict(source.state_dict()))
    target.load_state_dict(loaded)  # Tensors load like arrays
    for (name, a), (_, b) in zip(source.named_parameters(), target.named_parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)


def test_nested_checkpoint_round_trip(tmp_path):
    model = _model(3)
    opt = _trained_optimizer(model)
    checkpoint = {
        "model": model.state_dict(), "optim": opt.state_dict(), "step": 3, "loss": 0.25, "done": False,
        "name": "run-1", "nothing": None, "history": [1.5, 0.75, float("inf")], "shape": (2, 3),
        "mixed": [np.arange(4, dtype=np.int64), {"deep": Tensor(np.ones((2, 2), F32))}, "x"],
        "scalar_array": np.array(2.5, dtype=np.float64), "flags": np.array([True, False]),
        "empty": {}, "numpy_scalar": np.float32(0.5),
    }
    path = tmp_path / "ck.safetensors"
    pe.save(checkpoint, path)
    loaded = pe.load(path)
    assert loaded["numpy_scalar"] == 0.5 and type(loaded["numpy_scalar"]) is float  # numpy scalar -> Python
    del checkpoint["numpy_scalar"], loaded["numpy_scalar"]
    _assert_same_tree(loaded, {**checkpoint, "model": dict(checkpoint["model"])})
    assert list(loaded["optim"]["state"]) == [0, 1, 2, 3, 4, 5]  # int keys stay ints


def test_optimizer_resumes_from_a_loaded_checkpoint(tmp_path):
    model = _model(4)
    opt = _trained_optimizer(model)
    pe.save({"model": model.state_dict(), "optim": opt.state_dict()}, tmp_path / "ck.safetensors")
    loaded = pe.load(tmp_path / "ck.safetensors")
    model_b = _model(5)
    model_b.load_state_dict(loaded["model"])
    opt_b = SGD(model_b.parameters(), lr=0.5)
    opt_b.load_state_dict(loaded["optim"])
    assert opt_b.param_groups[0]["momentum"] == 0.9 and opt_b.lr == 0.1
    grads = [np.full(p.shape, 0.1, F32) for p in model.parameters()]
    for m, o in ((model, opt), (model_b, opt_b)):
        for p, g in zip(m.parameters(), grads):
            p.grad = g.copy()
        o.step()
    for (name, a), (_, b) in zip(model.named_parameters(), model_b.named_parameters()):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=0, atol=0, err_msg=name)


def test_torch_reads_a_flat_file_with_the_same_names(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    model = _model(6)
    path = tmp_path / "model.safetensors"
    pe.save(model.state_dict(), path)
    tensors = load_file(str(path))
    assert sorted(tensors) == sorted(model.state_dict())
    reference = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.GELU(approximate="tanh"),
                                    torch.nn.LayerNorm(7), torch.nn.Linear(7, 3))
    reference.load_state_dict(tensors)
    x = np.random.default_rng(0).standard_normal((4, 5)).astype(F32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model(Tensor(x)).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_nested_tensors_use_dotted_names(tmp_path):
    from safetensors.numpy import load_file

    path = tmp_path / "ck.safetensors"
    pe.save({"model": {"0.weight": np.ones(2, F32)}, "optim": {"state": {0: {"momentum_buffer": np.zeros(2, F32)}}},
             "items": [np.ones(1, F32)]}, path)
    assert sorted(load_file(str(path))) == ["items.0", "model.0.weight", "optim.state.0.momentum_buffer"]


def test_plain_safetensors_file_loads_flat(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    path = tmp_path / "torch.safetensors"
    save_file({"a.weight": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1, 2])}, str(path))
    loaded = pe.load(path)
    assert sorted(loaded) == ["a.weight", "b"] and all(isinstance(v, Tensor) for v in loaded.values())
    np.testing.assert_array_equal(loaded["a.weight"].numpy(), np.arange(6.0, dtype=F32).reshape(2, 3))


def test_loaded_tensors_are_writable(tmp_path):
    pe.save({"w": np.zeros(3, F32)}, tmp_path / "w.safetensors")
    loaded = pe.load(tmp_path / "w.safetensors")["w"]
    loaded.numpy()[0] = 1.0
    assert loaded.numpy()[0] == 1.0


@pytest.mark.parametrize("bad,key", [
    ({"a": {"b": object()}}, "a.b"),
    ({"x": [1, {"fn": len}]}, "x.1.fn"),
    ({"c": np.array(["s"])}, "c"),
    ({"z": np.zeros(2, np.complex64)}, "z"),
    ({"s": {1, 2}}, "s"),
], ids=["object", "function", "str-array", "complex", "set"])
def test_unsupported_leaf_raises_type_error_naming_the_key(tmp_path, bad, key):
    path = tmp_path / "bad.safetensors"
    with pytest.raises(TypeError, match=f"'{key}'"):
        pe.save(bad, path)
    assert not path.exists() and os.listdir(tmp_path) == []


def test_bad_keys_and_top_level_raise(tmp_path):
    with pytest.raises(TypeError, match="state_dict"):
        pe.save(_model(0), tmp_path / "m.safetensors")  # a Module, not its state dict
    with pytest.raises(TypeError):
        pe.save([np.zeros(1)], tmp_path / "m.safetensors")
    with pytest.raises(TypeError, match="key"):
        pe.save({(1, 2): np.zeros(1)}, tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="'a.b'"):  # two paths flatten to the same name
        pe.save({"a.b": np.zeros(1), "a": {"b": np.ones(1)}}, tmp_path / "m.safetensors")


def test_missing_file_error_names_the_path(tmp_path):
    path = tmp_path / "absent.safetensors"
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        pe.load(path)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "cut-header"])
def test_corrupt_file_raises_one_line_error_naming_the_path(tmp_path, damage):
    path = tmp_path / "ck.safetensors"
    pe.save({"model": _model(1).state_dict(), "step": 1}, path)
    data = path.read_bytes()
    damaged = {"truncated": data[:-7], "garbage": b"not a safetensors file at all" * 4, "empty": b"",
               "cut-header": data[:20]}[damage]
    path.write_bytes(damaged)
    with pytest.raises(ValueError) as info:
        pe.load(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_corrupt_structure_metadata_raises(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "ck.safetensors"
    save_file({"a": np.zeros(1, F32)}, str(path), metadata={serialization.STRUCTURE_KEY: "{not json"})
    with pytest.raises(ValueError, match="ck.safetensors"):
        pe.load(path)
    save_file({"a": np.zeros(1, F32)}, str(path),
              metadata={serialization.STRUCTURE_KEY: json.dumps({"tensor": "missing"})})
    with pytest.raises(ValueError, match="ck.safetensors"):
        pe.load(path)


def test_atomic_write_leaves_no_temporary_file_and_replaces(tmp_path):
    path = tmp_path / "ck.safetensors"
    pe.save({"v": np.zeros(2, F32)}, path)
    pe.save({"v": np.ones(2, F32)}, path)  # overwrite in place
    assert os.listdir(tmp_path) == ["ck.safetensors"]
    np.testing.assert_array_equal(pe.load(path)["v"].numpy(), [1.0, 1.0])


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ck.safetensors"
    pe.save({"v": np.zeros(2, F32)}, path)

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(serialization.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        pe.save({"v": np.ones(2, F32)}, path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["ck.safetensors"]  # the temporary file was removed
    np.testing.assert_array_equal(pe.load(path)["v"].numpy(), [0.0, 0.0])


def test_save_creates_missing_folders(tmp_path):
    path = tmp_path / "runs" / "a" / "ck.safetensors"
    pe.save({"step": 7}, path)
    assert pe.load(path) == {"step": 7}


def test_module_load_state_dict_errors_name_the_keys():
    model = _model(0)
    state = {k: v.copy() for k, v in model.state_dict().items()}
    before = model[0].weight.numpy().copy()
    with pytest.raises(KeyError, match=r"missing keys \['3.bias'\].*unexpected keys \['9.weight'\]"):
        model.load_state_dict({**{k: v for k, v in state.items() if k != "3.bias"}, "9.weight": np.zeros(1)})
    bad = {**state, "0.weight": np.full((7, 5), 2.0, F32), "3.weight": np.zeros((3, 6), F32)}
    with pytest.raises(ValueError, match=r"'3.weight' has shape \(3, 6\), expected \(3, 7\)"):
        model.load_state_dict(bad)
    np.testing.assert_array_equal(model[0].weight.numpy(), before)  # nothing copied before the check
    with pytest.raises(TypeError, match="'0.bias'"):
        model.load_state_dict({**state, "0.bias": "zeros"})
    result = model.load_state_dict({"0.bias": Tensor(np.ones(7, F32)), "extra": np.zeros(1)}, strict=False)
    assert result.unexpected_keys == ["extra"] and "3.bias" in result.missing_keys
    np.testing.assert_array_equal(model[0].bias.numpy(), np.ones(7, F32))


def test_dtype_numpy_lacks_raises_type_error_naming_the_path(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    path = tmp_path / "bf16.safetensors"
    save_file({"w": torch.zeros(2, dtype=torch.bfloat16)}, str(path))
    with pytest.raises(TypeError, match="bf16.safetensors"):
        pe.load(path)


def _one_line_value_error_naming(path, load=pe.load, match=None):
    with pytest.raises(ValueError, match=match) as info:
        load(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


@pytest.mark.parametrize("load", [pe.load, pe.io.load], ids=["pyengine.load", "io.load"])
def test_a_flipped_bit_anywhere_in_the_data_fails_the_checksum(tmp_path, load):
    path = tmp_path / "ck.safetensors"
    pe.save({"w": np.arange(64, dtype=F32), "b": np.ones(3, np.int64)}, path)
    data = bytearray(path.read_bytes())
    for position in (len(data) - 1, len(data) - 200, len(data) - 260):
        damaged = bytearray(data)
        damaged[position] ^= 0x10
        path.write_bytes(bytes(damaged))
        _one_line_value_error_naming(path, load, match="checksum mismatch")


def test_an_edited_header_fails_the_layout_check_or_the_checksum(tmp_path):
    path = tmp_path / "ck.safetensors"
    pe.save({"w": np.zeros((4, 6), F32), "step": 3}, path)
    data = path.read_bytes()
    same_size_edits = [(b'"shape":[4,6]', b'"shape":[6,4]'), (b'step', b'stop'), (b'"F32"', b'"I32"')]
    for old, new in same_size_edits:
        assert old in data
        path.write_bytes(data.replace(old, new))
        _one_line_value_error_naming(path, match="checksum mismatch|structure")
    path.write_bytes(data.replace(b'"shape":[4,6]', b'"shape":[4,7]'))
    _one_line_value_error_naming(path, match="needs 112 bytes")


@pytest.mark.parametrize("foreign", ["zip", "pickle", "text", "huge-header"])
def test_a_foreign_file_raises_one_line_error(tmp_path, foreign):
    import pickle
    import struct
    import zipfile

    path = tmp_path / "model.safetensors"
    if foreign == "zip":  # what torch.save writes
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", b"x" * 100)
    else:
        path.write_bytes({"pickle": pickle.dumps({"w": [1.0, 2.0]}), "text": b"weights = [1, 2, 3]\n" * 10,
                          "huge-header": struct.pack("<Q", 1 << 40) + b"{}"}[foreign])
    for load in (pe.load, pe.io.load):
        _one_line_value_error_naming(path, load)


def test_checksum_lives_in_metadata_that_torch_reads(tmp_path):
    pytest.importorskip("torch")
    from safetensors import safe_open

    path = tmp_path / "m.safetensors"
    pe.io.save({"w": np.ones(2, F32)}, path, metadata={"epochs": 3})
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        assert metadata["epochs"] == "3" and metadata["pyengine.checksum"].startswith("sha256:")
        assert handle.get_tensor("w").tolist() == [1.0, 1.0]


def test_big_endian_arrays_are_stored_little_endian(tmp_path):
    path = tmp_path / "be.safetensors"
    value = np.arange(5, dtype=">f4")
    pe.save({"v": value}, path)
    loaded = pe.load(path)["v"].numpy()
    assert loaded.dtype == np.float32 and loaded.dtype.byteorder in "=<"
    np.testing.assert_array_equal(loaded, value)


def test_io_save_is_atomic_too(tmp_path, monkeypatch):
    from pyengine.io import safe_file

    path = tmp_path / "model.safetensors"
    pe.io.save({"v": np.zeros(2, F32)}, path)
    monkeypatch.setattr(safe_file.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        pe.io.save({"v": np.ones(2, F32)}, path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["model.safetensors"]
    np.testing.assert_array_equal(pe.io.load(path)["v"], [0.0, 0.0])
