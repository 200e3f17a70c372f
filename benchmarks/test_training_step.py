"""A whole MLP training step (forward, cross-entropy, backward, SGD update).

pyengine runs it two ways: captured once and replayed (the executor) and
eagerly (autodiff on the tape); PyTorch runs its usual eager loop. numpy and
numba have no autodiff, so they do not apply here and are skipped.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import pyengine
from pyengine import functional as F
from pyengine import nn, optim

BATCH, WIDTHS, CLASSES = 256, (64, 256, 256), 10
GROUP = f"mlp training step batch {BATCH}, {'-'.join(map(str, WIDTHS))}-{CLASSES}"


def _data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((BATCH, WIDTHS[0]), dtype=np.float32), rng.integers(0, CLASSES, BATCH)


def _pyengine_model():
    pyengine.manual_seed(0)
    layers = []
    for a, b in itertools.pairwise(WIDTHS):
        layers += [nn.Linear(a, b), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(WIDTHS[-1], CLASSES))
    return model, optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def _pyengine_step(mode):
    model, opt = _pyengine_model()
    x, y = _data()
    if mode == "replay":
        graph = pyengine.capture(lambda xb, yb: F.cross_entropy(model(xb), yb), x, y, optimizer=opt)
        return lambda: graph.run(x, y)

    def eager():
        opt.zero_grad()
        loss = F.cross_entropy(model(pyengine.Tensor(x)), y)
        loss.backward()
        opt.step()
    return eager


def _torch_step():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    layers = []
    for a, b in itertools.pairwise(WIDTHS):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(WIDTHS[-1], CLASSES))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = (torch.from_numpy(a) for a in _data())

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return step


@pytest.mark.parametrize("mode", ("replay", "eager"))
def test_mlp_training_step(benchmark, impl, threads, mode):
    if impl in ("numpy", "numba"):
        pytest.skip(f"{impl} has no autodiff: a training step does not apply")
    step = _pyengine_step(mode) if impl == "pyengine" else _torch_step()
    benchmark.group = f"{GROUP} (pyengine {mode})"
    benchmark.extra_info.update(threads=threads, mode=mode)
    benchmark.pedantic(step, rounds=200, iterations=1, warmup_rounds=3)
