"""BERT (pyengine.models.bert) against transformers: random-weight BertModel and BertForMaskedLM
checkpoints written with save_pretrained, loaded by pyengine; hidden states, pooler output and
logits with padding masks, token types, the captured inference path, fine-tuning gradients, and
the errors of checkpoints that do not fit."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import assert_close

import pyengine as pe
from pyengine import Tensor
from pyengine import functional as F
from pyengine.models import bert, pretrained

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

F32 = np.float32

# (hidden, layers, heads, intermediate, act): odd head counts and head dims, both GELU forms.
CONFIGS = {
    "3heads": (15, 2, 3, 20, "gelu"),
    "5heads": (40, 1, 5, 36, "gelu"),
    "1head": (8, 3, 1, 16, "gelu_new"),
    "7heads-relu": (28, 2, 7, 30, "relu"),
}


def _hf_config(hidden, layers, heads, intermediate, act, **extra):
    return transformers.BertConfig(vocab_size=53, hidden_size=hidden, num_hidden_layers=layers,
                                   num_attention_heads=heads, intermediate_size=intermediate, hidden_act=act,
                                   max_position_embeddings=24, type_vocab_size=3, layer_norm_eps=1e-7, **extra)


def _save(model_class, config, folder, seed=0):
    torch.manual_seed(seed)
    model = model_class(config).eval()
    with torch.no_grad():  # a non-zero MLM bias and LayerNorm parameters, so that each is checked
        for name, param in model.named_parameters():
            if "LayerNorm" in name or name.endswith("predictions.bias"):
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(folder)
    return model


def _batch(rng, batch=3, steps=11, vocab=53):
    ids = rng.integers(0, vocab, (batch, steps))
    mask = np.ones((batch, steps), np.int64)
    mask[1, 7:] = 0  # padded rows of different lengths
    mask[2, 3:] = 0
    types = rng.integers(0, 3, (batch, steps))
    return ids, mask, types


@pytest.mark.parametrize("name", list(CONFIGS))
def test_bert_model_matches_transformers_with_padding_and_token_types(tmp_path, name):
    reference = _save(transformers.BertModel, _hf_config(*CONFIGS[name]), tmp_path)
    model = pretrained.from_pretrained(tmp_path)
    assert isinstance(model, bert.BertModel)
    ids, mask, types = _batch(np.random.default_rng(1))
    for kwargs in ({"attention_mask": mask, "token_type_ids": types}, {"attention_mask": mask}, {}):
        with torch.no_grad():
            want = reference(torch.from_numpy(ids), **{k: torch.from_numpy(v) for k, v in kwargs.items()})
        hidden, pooled = model(ids, **kwargs)
        assert isinstance(hidden, Tensor) and hidden.shape == (3, 11, CONFIGS[name][0])
        assert_close(hidden.numpy(), want.last_hidden_state.numpy(), atol=1e-5, rtol=1e-4, what="hidden")
        assert_close(pooled.numpy(), want.pooler_output.numpy(), atol=1e-5, rtol=1e-4, what="pooler")
        for _ in range(3):  # eager at first sight of the shape, then captured, then replayed
            compiled = model.last_hidden_state(ids, **kwargs)
            assert_close(compiled, want.last_hidden_state.numpy(), atol=1e-5, rtol=1e-4, what="inference")


@pytest.mark.parametrize("name", ["3heads", "5heads"])
def test_masked_lm_matches_transformers(tmp_path, name):
    reference = _save(transformers.BertForMaskedLM, _hf_config(*CONFIGS[name]), tmp_path)
    config, tensors = pretrained.read_folder(tmp_path)
    assert all(k.startswith(("bert.", "cls.")) for k in tensors)
    model = bert.from_hf(config, tensors)
    assert isinstance(model, bert.BertForMaskedLM)
    ids, mask, types = _batch(np.random.default_rng(2))
    with torch.no_grad():
        want = reference(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                         token_type_ids=torch.from_numpy(types)).logits.numpy()
    logits = model(ids, attention_mask=mask, token_type_ids=types)
    assert logits.shape == (3, 11, 53)
    assert_close(logits.numpy(), want, atol=1e-5, rtol=1e-4, what="logits")


def test_masked_lm_with_an_untied_decoder(tmp_path):
    reference = _save(transformers.BertForMaskedLM, _hf_config(*CONFIGS["3heads"], tie_word_embeddings=False),
                      tmp_path)
    model = pretrained.from_pretrained(tmp_path)
    assert "cls.predictions.decoder.weight" in model.state_dict()
    ids, mask, _ = _batch(np.random.default_rng(3))
    with torch.no_grad():
        want = reference(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    assert_close(model(ids, attention_mask=mask).numpy(), want, atol=1e-5, rtol=1e-4, what="logits")


def test_bare_and_prefixed_names_load_alike(tmp_path):
    _save(transformers.BertModel, _hf_config(*CONFIGS["3heads"]), tmp_path)
    config, tensors = pretrained.read_folder(tmp_path)
    prefixed = bert.from_hf(config, {f"bert.{k}": v for k, v in tensors.items()})
    bare = bert.from_hf(config, dict(tensors))
    for name, array in bare.state_dict().items():
        np.testing.assert_array_equal(array, prefixed.state_dict()[name], err_msg=name)
    qkv = bare.state_dict()["encoder.layer.0.attention.self.qkv.weight"]
    np.testing.assert_array_equal(qkv[15:30], tensors["encoder.layer.0.attention.self.key.weight"])


# ---------------------------------------------------------------- fine-tuning


def test_fine_tuning_gradients_match_transformers_and_the_loss_falls(tmp_path):
    hf_config = _hf_config(*CONFIGS["3heads"])
    hf_config.hidden_dropout_prob = hf_config.attention_probs_dropout_prob = 0.0
    reference = _save(transformers.BertForMaskedLM, hf_config, tmp_path)
    model = pretrained.from_pretrained(tmp_path).train()
    rng = np.random.default_rng(4)
    ids, mask, types = _batch(rng)
    labels = np.where(rng.random(ids.shape) < 0.5, rng.integers(0, 53, ids.shape), -100)
    labels[mask == 0] = -100

    def loss_of(pe_model):
        logits = pe_model(ids, attention_mask=mask, token_type_ids=types)
        return F.cross_entropy(logits.view(-1, 53), labels.reshape(-1))

    loss = loss_of(model)
    loss.backward()
    reference.train()
    want = reference(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                     token_type_ids=torch.from_numpy(types), labels=torch.from_numpy(labels))
    want.loss.backward()
    assert abs(loss.item() - want.loss.item()) <= 1e-5 * abs(want.loss.item())
    grads = {name: p.grad.numpy() for name, p in reference.named_parameters() if p.grad is not None}
    params = dict(model.named_parameters())
    for name, param in params.items():
        if ".qkv." in name:
            parts = [grads[name.replace(".qkv.", f".{r}.")] for r in ("query", "key", "value")]
            expected = np.concatenate(parts)
        else:
            expected = grads[name]
        scale = np.abs(expected).max() + 1e-12
        assert_close(param.grad.numpy() / scale, expected / scale, atol=1e-4, rtol=1e-4, what=name)
    optimizer = pe.optim.AdamW(model.parameters(), lr=2e-2)
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = loss_of(model)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.6 * losses[0], losses


# ---------------------------------------------------------------- errors


def _tensors(tmp_path):
    _save(transformers.BertModel, _hf_config(*CONFIGS["3heads"]), tmp_path)
    return pretrained.read_folder(tmp_path)


def test_missing_and_misshaped_tensors_are_named(tmp_path):
    config, tensors = _tensors(tmp_path)
    broken = dict(tensors)
    del broken["encoder.layer.1.attention.self.value.bias"]
    broken["encoder.layer.0.output.dense.weight"] = np.zeros((15, 19), F32)
    broken["encoder.layer.0.extra.weight"] = np.zeros(3, F32)
    with pytest.raises(ValueError) as info:
        bert.from_hf(config, broken)
    message = str(info.value)
    assert "missing: encoder.layer.1.attention.self.value.bias" in message
    assert "unexpected: encoder.layer.0.extra.weight" in message
    assert "encoder.layer.0.output.dense.weight (15, 19) (expected (15, 20))" in message


def test_configs_pyengine_does_not_model_are_refused(tmp_path):
    config, tensors = _tensors(tmp_path)
    for change, words in [({"hidden_act": "swish"}, "hidden_act 'swish'"),
                          ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
                          ({"is_decoder": True}, "decoder"),
                          ({"num_attention_heads": 4}, "not divisible")]:
        with pytest.raises(ValueError, match=words):
            bert.from_hf({**config, **change}, tensors)


def test_an_unknown_model_type_is_named(tmp_path):
    _tensors(tmp_path)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "model_type": "roberta-xl"}))
    with pytest.raises(ValueError, match="'roberta-xl'.*bert"):
        pretrained.from_pretrained(tmp_path)


def test_inputs_are_checked(tmp_path):
    _tensors(tmp_path)
    model = pretrained.from_pretrained(tmp_path)
    ids = np.zeros((2, 5), np.int64)
    with pytest.raises(ValueError, match="input_ids holds values outside"):
        model(ids + 53)
    with pytest.raises(ValueError, match="more than max_position_embeddings 24"):
        model(np.zeros((1, 25), np.int64))
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model(ids, attention_mask=np.ones((2, 4)))
    with pytest.raises(ValueError, match="token_type_ids holds values outside"):
        model(ids, token_type_ids=ids + 3)
    with pytest.raises(ValueError, match="integer array"):
        model(ids.astype(F32))
