"""One full GPT training step (forward, loss, backward, gradient clipping,
AdamW) at two shapes: "tiny" (L=4, d=256, 4 heads, T=256, B=8, vocab 256)
and the GPT-2 124M shape (L=12, d=768, 12 heads, T=256, B=4, vocab 50257).

pyengine replays its captured step; PyTorch runs the same model eagerly
with its fastest CPU optimizer (``AdamW(fused=True)``) and compiled with
``torch.compile``, each with flush-denormal on and off: after a few updates
the logits grow, softmax probabilities underflow to denormals and
PyTorch's backward GEMMs slow down on them unless denormals are flushed.
So every impl warms up over several optimizer steps before it is timed.

Each row records the model FLOPs of one step (6 N per token for the
matrices plus the attention's 12 L T d per token, forward and backward) so
compare.py can print model FLOP/s as a fraction of the FMA probe. The rows
of pyengine's replay and of PyTorch's eager step with flush-denormal record
``extra_info["training_memory_mib"]``: the peak resident set of a child
process that builds the model and optimizer (and, for pyengine, captures the
step) and runs three steps, less its size before (base.report_training_memory;
the other torch rows record none: a child per mode would compile, or run
30 s steps, again).
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np

import pyengine
from pyengine.models import GPT, GPTConfig

from base import Case, kernel, parametrize, report_training_memory, run, training_memory_mib

SHAPES = {
    "tiny": (GPTConfig(n_layer=4, n_head=4, n_embd=256, block_size=256, vocab_size=256), 8),
    "124M": (GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=256, vocab_size=50257), 4),
}
MODES = {"pyengine": ("replay",), "torch": ("eager", "eager flush-denormal", "compile", "compile flush-denormal")}
ROUNDS = {"tiny": (10, 4), "124M": (3, 3)}  # (timed rounds, warm-up steps)
LR, CLIP = 6e-4, 1.0
GRAPHS = {}  # case -> (pyengine's captured step, its inputs): profiled after timing
MEMORY_MODES = ("replay", "eager flush-denormal")  # the rows that measure training memory
MEMORY_STEPS = 3


def model_flops(config: GPTConfig, batch: int) -> int:
    """Training FLOPs of one step: 6 per parameter-token for the matrices (the
    head included, position embeddings not), 12 L T d per token for attention."""
    d, layers, steps = config.n_embd, config.n_layer, config.block_size
    matrix_params = layers * 12 * d * d + config.vocab_size * d
    per_token = 6 * matrix_params + 12 * layers * steps * d
    return per_token * batch * steps


def _cases():
    cases = []
    for name, (config, batch) in SHAPES.items():
        rounds, warmup = ROUNDS[name]
        for impl, modes in MODES.items():
            for mode in modes:
                cases.append(Case("gpt_training_step", "step", f"gpt {name} training step ({impl} {mode})",
                                  (batch, config.block_size), spec=(name, impl, mode), rounds=rounds,
                                  warmup_rounds=warmup, flops=model_flops(config, batch),
                                  info=(("model", name), ("mode", mode))))
    return cases


def batch_of(name):
    """The tokens and targets of one step, seeded."""
    config, batch = SHAPES[name]
    rng = np.random.default_rng(0)
    shape = (batch, config.block_size)
    return {"x": rng.integers(0, config.vocab_size, shape), "y": rng.integers(0, config.vocab_size, shape)}


def _data(case):
    return batch_of(case.spec[0])


training_step = kernel("gpt_training_step", inputs=_data,
                       missing="{impl} has no autodiff: a training step does not apply")


def pyengine_graph_of(name, b):
    """pyengine's captured training step of the shape `name` on the batch b."""
    config, _ = SHAPES[name]
    pyengine.manual_seed(0)
    model = GPT(config)
    optimizer = pyengine.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.1, max_grad_norm=CLIP)
    return pyengine.capture(lambda x, y: model(x, y)[1], b.x, b.y, optimizer=optimizer)


def torch_step_of(name, mode, b):
    """PyTorch's training step of the shape `name` in `mode` (eager or compile, flush-denormal or
    not) on the batch b."""
    import torch

    from pyengine.models.gpt_torch import TorchGPT

    config, _ = SHAPES[name]
    torch.set_flush_denormal("flush-denormal" in mode)
    torch.manual_seed(0)
    model = TorchGPT(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.1, fused=True)
    forward = torch.compile(model) if mode.startswith("compile") else model
    x, y = torch.from_numpy(b.x), torch.from_numpy(b.y)

    def step():
        optimizer.zero_grad(set_to_none=True)
        _, loss = forward(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()

    return step


@training_step.impl("pyengine", skip=lambda case: None if case.spec[1] == "pyengine" else "a torch mode")
def pyengine_step(case, b):
    graph = pyengine_graph_of(case.spec[0], b)
    GRAPHS[case] = (graph, b)
    return lambda: graph.run(b.x, b.y), None


@training_step.impl("torch", skip=lambda case: None if case.spec[1] == "torch" else "a pyengine mode")
def torch_step(case, b):
    return torch_step_of(case.spec[0], case.spec[2], b), None


@parametrize(_cases(), impls=("pyengine", "torch"))
def test_gpt_training_step(benchmark, threads, case, impl):
    try:
        run(benchmark, threads, case, impl)
        if impl == "pyengine":
            _print_profile(benchmark, case)
        name, _, mode = case.spec
        if mode in MEMORY_MODES:
            benchmark.extra_info["training_memory_mib"] = training_memory_mib(__file__, name, impl, mode, threads)
    finally:
        if impl == "torch":
            import torch

            torch.set_flush_denormal(False)  # the default again, for the rows that follow


def _print_profile(benchmark, case) -> None:
    """One more replayed step, timed by op kind (printed with pytest -s, and kept in extra_info)."""
    graph, b = GRAPHS.pop(case)
    rows = graph.profile(b.x, b.y)
    total = sum(seconds for _, seconds, _ in rows)
    benchmark.extra_info["profile"] = {kind: round(seconds / total, 4) for kind, seconds, _ in rows}
    print(f"\n{case.group}: one step by op kind ({total * 1e3:.0f} ms)")
    for kind, seconds, calls in rows[:15]:
        print(f"  {kind:32s} {seconds / total:6.1%}  {calls:4d} calls")


if __name__ == "__main__":  # the child of training_memory_mib: NAME IMPL MODE THREADS
    name, impl, mode, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    pyengine.set_num_threads(threads)
    b = SimpleNamespace(**batch_of(name))
    if impl == "torch":
        import torch

        torch.set_num_threads(threads)
        report_training_memory(lambda: torch_step_of(name, mode, b), steps=MEMORY_STEPS)
    else:
        def make_step():
            graph = pyengine_graph_of(name, b)
            return lambda: graph.run(b.x, b.y)

        report_training_memory(make_step, steps=MEMORY_STEPS)
