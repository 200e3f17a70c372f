"""T5 at the t5-small shape (d_model 512, 6 + 6 layers, 8 heads, d_ff 2048, vocab 32128), random
weights written once by transformers and loaded by both sides from the same folder:

- beam search, 4 beams, 50 new tokens, from one prompt of 64 tokens: pyengine's ``model.generate``
  (pyengine.generation driving T5's cached ``decode_step``) against transformers' ``generate`` with
  the same settings, under torch.no_grad();
- one training step's forward and backward (batch 8, 64 encoder and 32 decoder tokens, the loss
  against labels): pyengine's autograd against transformers' model in PyTorch's.

Both run at the same thread count; the FMA probe runs in the same session.
"""

from __future__ import annotations

import functools
import tempfile

import numpy as np
import pytest

from base import IMPLS, Case, kernel, parametrize, run, run_fma_probe

SHAPE = dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8, dropout_rate=0.0,
             decoder_start_token_id=0)
PROMPT, NEW_TOKENS, BEAMS = 64, 50, 4
TRAIN_BATCH, TRAIN_SOURCE, TRAIN_TARGET = 8, 64, 32
# per decoder step: 6 layers of q, k, v, o, cross q, o (6 d^2) and the feed-forward (2 d d_ff), the head
STEP_PARAMS = 6 * (6 * 512 * 512 + 2 * 512 * 2048) + 32128 * 512

CASES = [
    Case("t5_beam_search", "step", f"t5-small beam search ({BEAMS} beams, {NEW_TOKENS} tokens, prompt {PROMPT})",
         (1, PROMPT), rounds=3, warmup_rounds=1, flops=2 * BEAMS * NEW_TOKENS * STEP_PARAMS,
         info=(("beams", BEAMS), ("new_tokens", NEW_TOKENS))),
    Case("t5_training_step", "step", f"t5-small forward+backward (batch {TRAIN_BATCH}, {TRAIN_SOURCE} -> "
         f"{TRAIN_TARGET} tokens)", (TRAIN_BATCH, TRAIN_SOURCE), rounds=3, warmup_rounds=1),
]


@functools.lru_cache(maxsize=1)
def _folder() -> str:
    """A random-weight t5-small-shaped model, saved once by transformers."""
    import torch
    import transformers

    folder = tempfile.mkdtemp(prefix="t5-small-random-")
    torch.manual_seed(0)
    transformers.T5ForConditionalGeneration(transformers.T5Config(**SHAPE)).save_pretrained(folder)
    return folder


def _data(case):
    rng = np.random.default_rng(0)
    if case.kernel == "t5_beam_search":
        return {"input_ids": rng.integers(2, SHAPE["vocab_size"], (1, PROMPT))}
    return {"input_ids": rng.integers(2, SHAPE["vocab_size"], (TRAIN_BATCH, TRAIN_SOURCE)),
            "labels": rng.integers(2, SHAPE["vocab_size"], (TRAIN_BATCH, TRAIN_TARGET))}


MISSING = "{impl} has no T5 of its own here"
beam_search = kernel("t5_beam_search", inputs=_data, missing=MISSING)
training_step = kernel("t5_training_step", inputs=_data, missing=MISSING)


def _pyengine_model():
    from pyengine.models import from_pretrained

    return from_pretrained(_folder())


def _transformers_model():
    import transformers

    return transformers.T5ForConditionalGeneration.from_pretrained(_folder()).eval()


SETTINGS = dict(num_beams=BEAMS, max_new_tokens=NEW_TOKENS, do_sample=False, length_penalty=1.0,
                early_stopping=False)


@beam_search.impl("pyengine")
def pyengine_beam_search(case, b):
    model = _pyengine_model()
    mask = np.ones_like(b.input_ids)

    def generate():
        b.tokens = model.generate(b.input_ids, attention_mask=mask, **SETTINGS)

    return generate, None


@beam_search.impl("torch")
def transformers_beam_search(case, b):
    import torch

    model = _transformers_model()
    ids = torch.from_numpy(b.input_ids)
    mask = torch.ones_like(ids)

    def generate():
        with torch.no_grad():
            b.tokens = model.generate(ids, attention_mask=mask, **SETTINGS).numpy()

    return generate, None


@training_step.impl("pyengine")
def pyengine_training_step(case, b):
    model = _pyengine_model().train()

    def step():
        model.zero_grad()
        _, loss = model(b.input_ids, labels=b.labels)
        loss.backward()

    return step, None


@training_step.impl("torch")
def transformers_training_step(case, b):
    import torch

    model = _transformers_model().train()
    ids, labels = torch.from_numpy(b.input_ids), torch.from_numpy(b.labels)

    def step():
        model.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()

    return step, None


@parametrize(CASES, impls=("pyengine", "torch"))
def test_t5(benchmark, threads, case, impl):
    run(benchmark, threads, case, impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_fma_probe(benchmark, threads, impl):
    """The machine's FMA peak in the same run: the generation is memory-bound (every step streams
    the decoder's weights and the head), read it against the probe for how loaded the cores were."""
    if impl != "pyengine":
        pytest.skip("the FMA probe is pyengine's own (kernels.fma_probe)")
    run_fma_probe(benchmark, threads, threads)
