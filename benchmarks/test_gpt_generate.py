"""Per-token generation latency with a key/value cache: one decoding step
(one new token through every layer, its attention over the cached prompt,
then the head), batch 1, at prompt lengths 16 and 512, for the "tiny"
(L=4, d=256) and GPT-2 124M (L=12, d=768, vocab 50257) shapes.

pyengine runs GPT's cached decoding step (GPT.decode_step: the cached_attention
kernel appends to the cache and reads its prefix in place);
PyTorch runs the same model with the cache transformers keeps (keys and
values concatenated per step), under torch.no_grad(). Each timed call
starts from the same cache filled with the prompt.
"""

from __future__ import annotations

import numpy as np

import pyengine
from pyengine.models import GPT, GPTConfig

from base import Case, kernel, parametrize, run

SHAPES = {
    "tiny": GPTConfig(n_layer=4, n_head=4, n_embd=256, block_size=1024, vocab_size=256),
    "124M": GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257),
}
PROMPTS = (16, 512)

CASES = [Case("gpt_decode_step", "step", f"gpt {name} decode one token after {prompt}", (1, prompt),
              spec=(name, prompt), rounds=50, warmup_rounds=5, info=(("model", name), ("prompt", prompt)))
         for name in SHAPES for prompt in PROMPTS]


def _data(case):
    name, prompt = case.spec
    rng = np.random.default_rng(0)
    return {"prompt": rng.integers(0, SHAPES[name].vocab_size, (1, prompt)),
            "token": rng.integers(0, SHAPES[name].vocab_size, (1, 1))}


decode_step = kernel("gpt_decode_step", inputs=_data, missing="{impl} has no model of its own here")


@decode_step.impl("pyengine")
def pyengine_decode(case, b):
    name, prompt = case.spec
    pyengine.manual_seed(0)
    model = GPT(SHAPES[name]).eval()
    cache = model.new_cache(1, model.config.block_size)
    model.decode_step(b.prompt, cache)

    def step():
        cache.length = prompt  # the same prompt-filled cache every call
        model.decode_step(b.token, cache)

    return step, None


@decode_step.impl("torch")
def torch_decode(case, b):
    import torch

    from pyengine.models.gpt_torch import TorchGPT, new_caches

    name, prompt = case.spec
    torch.manual_seed(0)
    model = TorchGPT(SHAPES[name]).eval()
    caches = new_caches(model)
    token = torch.from_numpy(b.token)
    with torch.no_grad():
        model(torch.from_numpy(b.prompt), caches=caches)

    def step():
        with torch.no_grad():
            model(token, caches=[list(c) for c in caches], start=prompt)  # a fresh copy of the lists

    return step, None


@parametrize(CASES, impls=("pyengine", "torch"))
def test_gpt_decode_step(benchmark, threads, case, impl):
    run(benchmark, threads, case, impl)
