"""Hugging Face GPT-2 folders (pyengine.models.hf_gpt2) against transformers:
logits (with left padding), the loss and every parameter gradient, position
ids, pyengine's save_pretrained read back by transformers, and the errors of
checkpoints that do not fit."""

from __future__ import annotations

import numpy as np
import pytest

import pyengine as pe
from pyengine.models import GPT, GPTConfig, pretrained
from pyengine.models.hf_gpt2 import GPT2LMHeadModel, from_hf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from hf_gpt2_cases import CONFIGS, hf_gpt2, load, prompts  # noqa: E402 - needs transformers

CONV1D = ("c_attn.weight", "c_proj.weight", "c_fc.weight")


def _relative_error(actual, expected, where=None):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if where is not None:
        actual, expected = actual[where], expected[where]
    return np.abs(actual - expected).max() / np.abs(expected).max()


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("padded", [False, True], ids=["full", "left-padded"])
def test_logits_equal_transformers(tmp_path, name, padded):
    reference = hf_gpt2(name)
    model = load(tmp_path, reference)
    assert isinstance(model, GPT2LMHeadModel) and not model.training
    ids, mask = prompts(pads=(0, 3, 1) if padded else (0, 0, 0))
    with torch.no_grad():
        expected = reference(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    logits = model(ids, attention_mask=mask)
    assert logits.shape == expected.shape
    assert _relative_error(logits.numpy(), expected, mask.astype(bool)) < 1e-4


def test_position_ids_are_transformers(tmp_path):
    reference = hf_gpt2("3heads")
    model = load(tmp_path, reference)
    ids, mask = prompts()
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    with torch.no_grad():
        expected = reference(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                             position_ids=torch.from_numpy(positions)).logits.numpy()
    got = model(ids, attention_mask=mask, position_ids=positions).numpy()
    assert _relative_error(got, expected, mask.astype(bool)) < 1e-4


@pytest.mark.parametrize("name", ["3heads", "5heads"])
def test_loss_and_every_gradient_equal_transformers(tmp_path, name):
    reference = hf_gpt2(name)
    model = load(tmp_path, reference)
    ids, _ = prompts(seed=4, steps=9, pads=(0, 0, 0))
    labels = ids.copy()
    labels[1, 4:6] = -100
    out = reference(torch.from_numpy(ids), labels=torch.from_numpy(labels))
    out.loss.backward()
    loss, logits = model(ids, labels=labels)
    loss.backward()
    assert abs(loss.item() - out.loss.item()) <= 1e-4 * abs(out.loss.item())
    assert _relative_error(logits.numpy(), out.logits.detach().numpy()) < 1e-4
    expected = {name: p.grad.numpy() for name, p in reference.named_parameters()}
    grads = dict(model.named_parameters())
    assert len(grads) == len(expected)
    for hf_name, grad in expected.items():
        got = grads[hf_name].grad.numpy()
        got = got.T if hf_name.endswith(CONV1D) else got
        assert _relative_error(got, grad) < 1e-4, hf_name


@pytest.mark.parametrize("bias", [True, False])
def test_a_pyengine_gpt_saved_loads_in_transformers_with_the_same_logits(tmp_path, bias):
    pe.manual_seed(3)
    model = GPT(GPTConfig(n_layer=2, n_head=3, n_embd=24, block_size=20, vocab_size=41, bias=bias))
    for _, parameter in model.named_parameters():
        parameter.data[...] += np.random.default_rng(1).normal(0, 0.2, parameter.shape)
    model.save_pretrained(tmp_path)
    reference = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    ids = np.random.default_rng(0).integers(0, 41, (2, 20))
    logits, _ = model(ids)
    with torch.no_grad():
        expected = reference(torch.from_numpy(ids)).logits.numpy()
    assert _relative_error(logits.numpy(), expected) < 1e-4
    again = pretrained.from_pretrained(tmp_path)  # and back into pyengine
    np.testing.assert_allclose(again(ids).numpy(), logits.numpy(), rtol=1e-5, atol=1e-6)


def test_old_checkpoints_with_mask_buffers_and_no_prefix_load(tmp_path):
    reference = hf_gpt2("7heads")
    reference.save_pretrained(tmp_path)
    config, tensors = pretrained.read_folder(tmp_path)
    old = {name[len("transformer."):] if name.startswith("transformer.") else name: value
           for name, value in tensors.items()}
    old["h.0.attn.bias"] = np.tril(np.ones((48, 48), np.float32))[None, None]
    old["h.0.attn.masked_bias"] = np.array(-1e4, np.float32)
    old["lm_head.weight"] = tensors["transformer.wte.weight"]
    model = from_hf(config, old)
    ids, mask = prompts()
    with torch.no_grad():
        expected = reference(torch.from_numpy(ids)).logits.numpy()
    assert _relative_error(model(ids).numpy(), expected) < 1e-4


def test_checkpoints_that_do_not_fit_name_the_tensor(tmp_path):
    reference = hf_gpt2("3heads")
    reference.save_pretrained(tmp_path)
    config, tensors = pretrained.read_folder(tmp_path)
    missing = {k: v for k, v in tensors.items() if k != "transformer.h.1.mlp.c_fc.bias"}
    with pytest.raises(ValueError, match=r"missing \['transformer.h.1.mlp.c_fc.bias'\]"):
        from_hf(config, missing)
    misshaped = dict(tensors, **{"transformer.wpe.weight": np.zeros((47, 30), np.float32)})
    with pytest.raises(ValueError, match="'transformer.wpe.weight' is"):
        from_hf(config, misshaped)
    extra = dict(tensors, **{"transformer.h.0.attn.q_proj.weight": np.zeros((30, 30), np.float32)})
    with pytest.raises(ValueError, match="unexpected.*q_proj"):
        from_hf(config, extra)
    untied = dict(tensors, **{"lm_head.weight": np.zeros((97, 30), np.float32)})
    with pytest.raises(ValueError, match="lm_head.weight"):
        from_hf(config, untied)
    with pytest.raises(ValueError, match="activation_function 'relu'"):
        from_hf(dict(config, activation_function="relu"), tensors)
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        from_hf(dict(config, scale_attn_by_inverse_layer_idx=True), tensors)
    with pytest.raises(ValueError, match="lacks 'n_head'"):
        from_hf({k: v for k, v in config.items() if k != "n_head"}, tensors)


def test_bad_calls_are_clear_errors(tmp_path):
    model = load(tmp_path, hf_gpt2("3heads"))
    ids, mask = prompts()
    with pytest.raises(ValueError, match="attention_mask must be an integer array"):
        model(ids, attention_mask=mask[:, 1:])
    with pytest.raises(ValueError, match="only 0 and 1"):
        model(ids, attention_mask=mask * 2)
    with pytest.raises(ValueError, match="labels must be integers"):
        model(ids, labels=ids[:, 1:])
    with pytest.raises(ValueError, match="position_ids outside"):
        model(ids, position_ids=np.full(ids.shape, 48))
