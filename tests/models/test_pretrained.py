"""Reading and writing Hugging Face folders (pyengine.models.pretrained), against transformers' own files."""

import json
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

from pyengine import nn
from pyengine.models import pretrained

torch = pytest.importorskip("torch")


def _tiny_bert(folder, **save_options):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=24, max_position_embeddings=20)
    torch.manual_seed(0)
    model = transformers.BertModel(config)
    model.save_pretrained(folder, **save_options)
    return {name: value.detach().numpy() for name, value in model.state_dict().items()}


@pytest.mark.parametrize("shard_size", [None, "20KB"])
def test_read_folder_gives_the_tensors_transformers_wrote(tmp_path, shard_size):
    expected = _tiny_bert(tmp_path, **({"max_shard_size": shard_size} if shard_size else {}))
    if shard_size:
        assert os.path.isfile(tmp_path / pretrained.INDEX_FILE)
        assert not os.path.isfile(tmp_path / pretrained.WEIGHTS_FILE)
    config, tensors = pretrained.read_folder(tmp_path)
    assert config["model_type"] == "bert" and config["hidden_size"] == 16
    assert set(tensors) == set(expected)
    for name, array in tensors.items():
        np.testing.assert_array_equal(array, expected[name], err_msg=name)
        assert not array.flags.writeable, name  # memory-mapped read-only


def test_half_precision_weights_are_widened_to_float32(tmp_path):
    from safetensors.torch import save_file as save_torch

    values = torch.linspace(-3, 3, 12).reshape(3, 4)
    save_torch({"h": values.half(), "b": values.bfloat16(), "i": torch.arange(5)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    _, tensors = pretrained.read_folder(tmp_path)
    assert tensors["h"].dtype == np.float32 and tensors["b"].dtype == np.float32
    np.testing.assert_array_equal(tensors["h"], values.half().float().numpy())
    np.testing.assert_array_equal(tensors["b"], values.bfloat16().float().numpy())
    np.testing.assert_array_equal(tensors["i"], np.arange(5))


def test_a_truncated_weights_file_is_a_clear_error(tmp_path):
    _tiny_bert(tmp_path)
    path = tmp_path / pretrained.WEIGHTS_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match="not an intact safetensors file"):
        pretrained.read_folder(tmp_path)
    path.write_bytes(b"\x07")
    with pytest.raises(ValueError, match="shorter than the 8-byte header"):
        pretrained.read_folder(tmp_path)


def test_a_corrupted_header_is_a_clear_error(tmp_path):
    save_file({"w": np.ones(3, np.float32)}, str(tmp_path / pretrained.WEIGHTS_FILE))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    data = bytearray((tmp_path / pretrained.WEIGHTS_FILE).read_bytes())
    data[9] = ord("#")
    (tmp_path / pretrained.WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="header is not JSON"):
        pretrained.read_folder(tmp_path)


def test_missing_files_and_unknown_architectures(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        pretrained.read_folder(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        pretrained.read_folder(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        pretrained.read_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "resnet-9000"}))
    with pytest.raises(FileNotFoundError, match="neither model.safetensors"):
        pretrained.read_folder(tmp_path)
    save_file({"w": np.ones(3, np.float32)}, str(tmp_path / pretrained.WEIGHTS_FILE))
    with pytest.raises(ValueError, match="type 'resnet-9000'; pyengine knows bert, gpt2, t5"):
        pretrained.from_pretrained(tmp_path)


def test_an_index_naming_an_absent_tensor_or_a_foreign_path(tmp_path):
    save_file({"a": np.ones(3, np.float32)}, str(tmp_path / "part-1.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    index = tmp_path / pretrained.INDEX_FILE
    index.write_text(json.dumps({"weight_map": {"a": "part-1.safetensors", "b": "part-1.safetensors"}}))
    with pytest.raises(ValueError, match=r"part-1.safetensors lacks \['b'\]"):
        pretrained.read_folder(tmp_path)
    index.write_text(json.dumps({"weight_map": {"a": "../elsewhere.safetensors"}}))
    with pytest.raises(ValueError, match="outside the folder"):
        pretrained.read_folder(tmp_path)
    index.write_text(json.dumps({"no_map": 1}))
    with pytest.raises(ValueError, match="not a safetensors index"):
        pretrained.read_folder(tmp_path)


def test_assign_state_names_every_misfit():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    state = {"0.weight": np.ones((4, 3)), "0.bias": np.ones(5), "1.weight": np.ones((2, 4)), "extra": np.ones(1)}
    with pytest.raises(ValueError) as error:
        pretrained.assign_state(model, state, "Test")
    message = str(error.value)
    assert "missing ['1.bias']" in message and "unexpected ['extra']" in message
    assert "'0.bias' is (5,), the model expects (4,)" in message
    good = {name: np.full(array.shape, 0.5) for name, array in model.state_dict().items()}
    pretrained.assign_state(model, good, "Test")
    assert all((array == 0.5).all() for array in model.state_dict().values())


def test_write_folder_is_read_back_and_by_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    expected = _tiny_bert(tmp_path / "original")
    config, tensors = pretrained.read_folder(tmp_path / "original")
    pretrained.write_folder(tmp_path / "copy", config, tensors)
    reloaded = transformers.BertModel.from_pretrained(tmp_path / "copy")
    for name, value in reloaded.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), expected[name], err_msg=name)
