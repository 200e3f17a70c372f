"""Greedy generation with a GPT-2 124M-shaped model (L=12, d=768, 12 heads,
vocab 50257, random weights), batch 1, 32 new tokens after prompts of 16 and
512 tokens, the whole ``generate`` call (the prefill included): pyengine's
GPT2LMHeadModel (loaded from the folder transformers wrote) with its cache
against transformers' ``GPT2LMHeadModel.generate`` (its DynamicCache) under
torch.no_grad(), at the same thread count. Both must give the same tokens
(checked before timing). Tokens per second = 32 / the time per call. The FMA
probe runs in the same session.
"""

from __future__ import annotations

import functools
import tempfile

import numpy as np
import pytest

from base import IMPLS, Case, kernel, parametrize, run, run_fma_probe

NEW_TOKENS = 32
PROMPTS = (16, 512)
CASES = [Case("hf_generate", "step", f"gpt2 124M greedy {NEW_TOKENS} tokens after {prompt}", (1, prompt),
              spec=prompt, rounds=3, warmup_rounds=1, info=(("prompt", prompt), ("new_tokens", NEW_TOKENS)))
         for prompt in PROMPTS]
_TOKENS: dict = {}  # prompt length -> pyengine's tokens, which transformers' must equal


@functools.lru_cache(maxsize=1)
def _models():
    """(transformers model, pyengine model) with the same random weights, no EOS (all 32 tokens run)."""
    import torch
    import transformers

    from pyengine.models import from_pretrained

    torch.manual_seed(0)
    config = transformers.GPT2Config(eos_token_id=None, bos_token_id=None, pad_token_id=0)
    reference = transformers.GPT2LMHeadModel(config).eval()
    reference.generation_config.eos_token_id = None
    with tempfile.TemporaryDirectory() as folder:
        reference.save_pretrained(folder)
        model = from_pretrained(folder)
    return reference, model


def _data(case):
    return {"prompt": np.random.default_rng(case.spec).integers(0, 50257, (1, case.spec))}


generate = kernel("hf_generate", inputs=_data, missing="{impl} has no GPT-2 generate here")


@generate.impl("pyengine")
def pyengine_generate(case, b):
    _, model = _models()

    def call():
        _TOKENS[case.spec] = model.generate(b.prompt, max_new_tokens=NEW_TOKENS)

    return call, None


@generate.impl("torch")
def torch_generate(case, b):
    import torch
    import transformers

    reference, _ = _models()
    transformers.logging.set_verbosity_error()
    prompt = torch.from_numpy(b.prompt)

    def call():
        with torch.no_grad():
            out = reference.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW_TOKENS,
                                     min_new_tokens=NEW_TOKENS, do_sample=False)
        if case.spec in _TOKENS:
            np.testing.assert_array_equal(out.numpy(), _TOKENS[case.spec], err_msg="transformers' tokens differ")

    return call, None


@pytest.mark.parametrize("impl", IMPLS)
def test_fma_probe(benchmark, threads, impl):
    """The machine's FMA peak in the same run (generation at batch 1 is bound by reading the weights)."""
    if impl != "pyengine":
        pytest.skip("the FMA probe is pyengine's own (kernels.fma_probe)")
    run_fma_probe(benchmark, threads, threads)


@parametrize(CASES, impls=("pyengine", "torch"))
def test_hf_generate(benchmark, threads, case, impl):
    run(benchmark, threads, case, impl)
