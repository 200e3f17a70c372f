"""Random-weight Hugging Face GPT-2s the GPT-2 and generation tests share:
built with transformers, written with save_pretrained, loaded by pyengine."""

from __future__ import annotations

import numpy as np
import pytest

VOCAB = 97
PAD = 0

# Several small shapes: odd head counts, an MLP of its own width, another epsilon.
CONFIGS = {
    "3heads": dict(n_embd=30, n_head=3, n_layer=2),
    "5heads": dict(n_embd=35, n_head=5, n_layer=3, n_inner=50, layer_norm_epsilon=1e-6),
    "7heads": dict(n_embd=21, n_head=7, n_layer=1),
}


def hf_gpt2(name: str, seed: int = 0, **overrides):
    """A transformers GPT2LMHeadModel (eval mode, no dropout) whose every
    weight is perturbed (biases and LayerNorms too), so that the logits are
    spread and no argmax is a near tie."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    options = dict(vocab_size=VOCAB, n_positions=48, bos_token_id=1, eos_token_id=2, pad_token_id=PAD,
                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **CONFIGS[name])
    options.update(overrides)
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**options)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return model


def set_special_tokens(model, **tokens) -> None:
    """eos_token_id / pad_token_id / bos_token_id on both of transformers' configs."""
    for key, value in tokens.items():
        setattr(model.config, key, value)
        setattr(model.generation_config, key, value)


def load(folder, hf_model):
    """hf_model written to folder and read back by pyengine."""
    from pyengine.models import from_pretrained

    hf_model.save_pretrained(folder)
    return from_pretrained(folder)


def prompts(seed: int = 0, batch: int = 3, steps: int = 7, pads=(0, 3, 1)):
    """(input_ids, attention_mask): random tokens (no pad token among them),
    left-padded by `pads` positions per row."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, VOCAB, (batch, steps))
    mask = np.ones((batch, steps), np.int64)
    for row, count in enumerate(pads[:batch]):
        ids[row, :count], mask[row, :count] = PAD, 0
    return ids, mask
