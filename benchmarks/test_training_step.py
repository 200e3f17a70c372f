"""A whole MLP training step (forward, cross-entropy, backward, SGD update).

pyengine runs it two ways: captured once and replayed (the executor) and
eagerly (autodiff on the tape); PyTorch runs its usual eager loop, a row of
both groups. numpy and numba have no autodiff, so they do not apply here and
are skipped. The step is a kernel of the benchmark base (base.py) with no
declared ops: no buffers, and nothing to check (the two models start from
different random weights).
"""

from __future__ import annotations

import itertools

import numpy as np

import pyengine
from pyengine import functional as F
from pyengine import nn, optim

from base import Case, kernel, parametrize, run

BATCH, WIDTHS, CLASSES = 256, (64, 256, 256), 10
GROUP = f"mlp training step batch {BATCH}, {'-'.join(map(str, WIDTHS))}-{CLASSES}"
LR, MOMENTUM = 0.01, 0.9

CASES = [Case("mlp_training_step", "step", f"{GROUP} (pyengine {mode})", (BATCH, WIDTHS[0]),
              spec=mode, rounds=200, warmup_rounds=3, info=(("mode", mode),))
         for mode in ("replay", "eager")]


def _data(case):
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((BATCH, WIDTHS[0]), dtype=np.float32),
            "y": rng.integers(0, CLASSES, BATCH)}


training_step = kernel("mlp_training_step", inputs=_data,
                       missing="{impl} has no autodiff: a training step does not apply")


@training_step.impl("pyengine")
def pyengine_step(case, b):
    pyengine.manual_seed(0)
    layers = []
    for a, c in itertools.pairwise(WIDTHS):
        layers += [nn.Linear(a, c), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(WIDTHS[-1], CLASSES))
    opt = optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    if case.spec == "replay":
        graph = pyengine.capture(lambda xb, yb: F.cross_entropy(model(xb), yb), b.x, b.y,
                                 optimizer=opt)
        return lambda: graph.run(b.x, b.y), None

    def eager():
        opt.zero_grad()
        loss = F.cross_entropy(model(pyengine.Tensor(b.x)), b.y)
        loss.backward()
        opt.step()

    return eager, None


@training_step.impl("torch")
def torch_step(case, b):
    import torch

    torch.manual_seed(0)
    layers = []
    for a, c in itertools.pairwise(WIDTHS):
        layers += [torch.nn.Linear(a, c), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(WIDTHS[-1], CLASSES))
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    x, y = torch.from_numpy(b.x), torch.from_numpy(b.y)

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return step, None


@parametrize(CASES)
def test_mlp_training_step(benchmark, threads, case, impl):
    run(benchmark, threads, case, impl)
