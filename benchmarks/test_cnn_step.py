"""One CNN training step (forward, cross-entropy, backward, SGD with momentum and weight decay):
LeNet5 at batch 64 on 28x28 grey images and ResNet-18 (the small-image stem: a 3x3 convolution,
no max pooling) at batch 32 on 32x32 colour images.

pyengine replays its captured step; PyTorch runs its twin (pyengine.models.cnn_torch, the same
weights) eagerly, the loop a user writes. Each row records the model FLOPs of a step (three times
the forward's convolution and linear multiply-adds, two FLOPs each; batch norm, pooling and the
optimizer not counted) so compare.py prints model FLOP/s, to be read against the FMA probe of the
same run. ``extra_info["training_memory_mib"]`` is the memory training takes: the peak resident
set of a child process that builds the model (and, for pyengine, captures the step) and runs five
steps, less its size before it built anything, the framework imported and the batch made
(measured in a child so that one framework's pages do not count for the other).
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest

import pyengine
from pyengine import functional as F
from pyengine.models import LeNet5, ResNet

from base import Case, kernel, parametrize, report_training_memory, run, run_fma_probe, training_memory_mib

SHAPES = {  # name: (constructor keywords, batch, input channels, image side)
    "lenet5": ({"in_channels": 1, "size": 28}, 64, 1, 28),
    "resnet18": ({"in_channels": 3, "size": 32}, 32, 3, 32),
}
ROUNDS = {"lenet5": (30, 3), "resnet18": (3, 2)}  # (timed rounds, warm-up steps)
LR, MOMENTUM, DECAY = 0.05, 0.9, 5e-4


def build(name):
    """The pyengine model of a shape, seeded."""
    keywords = SHAPES[name][0]
    pyengine.manual_seed(0)
    return (LeNet5 if name == "lenet5" else ResNet)(**keywords)


def model_flops(name) -> int:
    """3x the forward's convolution and linear FLOPs, counted on the torch twin by hooks."""
    import torch

    from pyengine.models.cnn_torch import to_torch

    keywords, batch, channels, side = SHAPES[name]
    twin, total = to_torch(build(name), **keywords), [0]

    def count(module, inputs, output):
        weight = module.weight
        total[0] += 2 * output.numel() * (weight.numel() // weight.shape[0])

    for module in twin.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            module.register_forward_hook(count)
    with torch.no_grad():
        twin(torch.zeros(batch, channels, side, side))
    return 3 * total[0]


def batch_of(name):
    """The images and labels of one step, seeded."""
    _, batch, channels, side = SHAPES[name]
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((batch, channels, side, side), dtype=np.float32),
            "y": rng.integers(0, 10, batch)}


def _data(case):
    return batch_of(case.spec[0])


def pyengine_step_of(name, b):
    model = build(name)
    optimizer = pyengine.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=DECAY)
    graph = pyengine.capture(lambda x, y: F.cross_entropy(model(x), y), b.x, b.y, optimizer=optimizer)
    return lambda: graph.run(b.x, b.y)


def torch_step_of(name, b):
    import torch

    from pyengine.models.cnn_torch import to_torch

    model = to_torch(build(name), **SHAPES[name][0])
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=DECAY)
    x, y = torch.from_numpy(b.x), torch.from_numpy(b.y)

    def step():
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def _cases():
    cases = []
    for name in SHAPES:
        rounds, warmup = ROUNDS[name]
        for impl in ("pyengine", "torch"):
            _, batch, channels, side = SHAPES[name]
            cases.append(Case("cnn_training_step", "step", f"{name} training step batch {batch} ({impl})",
                              (batch, channels, side, side), spec=(name, impl), rounds=rounds,
                              warmup_rounds=warmup, flops=model_flops(name), info=(("model", name),)))
    return cases


training_step = kernel("cnn_training_step", inputs=_data,
                       missing="{impl} has no autodiff: a training step does not apply")


@training_step.impl("pyengine", skip=lambda case: None if case.spec[1] == "pyengine" else "torch's row")
def pyengine_step(case, b):
    return pyengine_step_of(case.spec[0], b), None


@training_step.impl("torch", skip=lambda case: None if case.spec[1] == "torch" else "pyengine's row")
def torch_step(case, b):
    return torch_step_of(case.spec[0], b), None


@parametrize(_cases(), impls=("pyengine", "torch"))
def test_cnn_training_step(benchmark, threads, case, impl):
    run(benchmark, threads, case, impl)
    benchmark.extra_info["training_memory_mib"] = training_memory_mib(__file__, case.spec[0], impl, threads)


@pytest.mark.parametrize("impl", ("pyengine", "torch"))
def test_fma_probe(benchmark, threads, impl):
    if impl != "pyengine":
        pytest.skip("the FMA probe is pyengine's own (kernels.fma_probe)")
    run_fma_probe(benchmark, threads, threads)


if __name__ == "__main__":  # the child of training_memory_mib: NAME IMPL THREADS
    name, impl, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    pyengine.set_num_threads(threads)
    if impl == "torch":
        import torch

        torch.set_num_threads(threads)
    b = SimpleNamespace(**batch_of(name))
    report_training_memory(lambda: (pyengine_step_of if impl == "pyengine" else torch_step_of)(name, b), steps=5)
