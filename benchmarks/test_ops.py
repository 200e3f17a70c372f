"""Elementwise, reduction, loss and optimizer benchmarks: pyengine against numpy, torch and numba.

Groups (one row per implementation, the ``impl`` parameter), named op, pass and shape:

- ``add`` with a bias-like broadcast, (4096, 3072) + (3072,): forward, and backward
  (grad_a = grad_c, grad_b = the column sum of grad_c);
- ``mul``, (4096, 3072) * (3072,): forward;
- ``gelu`` (tanh form) on (4096, 3072): forward and backward (grad_x from grad_y and x);
- ``relu`` on (4096, 3072): forward;
- ``sum`` of (8192, 1024) over the last axis and over axis 0;
- ``cross_entropy`` of (1024, 50304) logits (the GPT-2 LM head at 1024 tokens) against int64
  targets, all valid classes: forward, and forward+backward (pyengine's backward recomputes the
  softmax from the logits, the peers reuse what their forward kept: torch its log-softmax, as
  its eager autograd does, numpy its exponentials, numba the rows' logsumexp);
- ``sgd_update`` with momentum 0.9 on a 10M-element parameter (one step after the first).

Every implementation writes into preallocated buffers (numpy ufuncs with ``out=``, torch aten
``.out`` ops or in-place tensor ops without autograd, numba's kernels in ``numba_kernels.py``),
so no allocation is timed; numpy's scratch arrays are allocated when the case is built.
pyengine's backward kernels accumulate into their gradient buffers (``+=``); the peers overwrite
theirs, as in ``test_kernels.py``. torch's SGD step is ``torch.optim.SGD``'s CPU path
(``_single_tensor_sgd``: ``buf.mul_(m).add_(grad)``, ``param.add_(buf, alpha=-lr)``); its relu is
``aten.clamp_min.out`` (aten's relu kernel: ``aten.relu.out`` allocates a result and copies it).

Each case runs once untimed (JIT compilation, first touch, a backward's forward), and each
peer's result is checked against pyengine's on the same inputs before timing. ``impl`` is
parametrized here, innermost (like ``test_gemm.py``), so the four rows of a group run back to
back with one set of inputs and one reference alive. The file takes about 70 s at
``--threads 2`` on 2 cores.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest

import pyengine.kernels as K

from .conftest import OPTIONAL_IMPLS
from .impls import IMPLS

REFERENCE = "pyengine"
RTOL = 1e-3  # loose: the check only guards against timing a wrong kernel
LR, MOMENTUM = 0.01, 0.9

_f32 = np.float32


@dataclass(frozen=True)
class Case:
    """One benchmark group: an op, its pass and its inputs' shape."""
    op: str          # add, mul, gelu, relu, sum, cross_entropy, sgd_update
    pass_name: str   # forward, backward, forward+backward, step
    shape: tuple     # the main operand's shape
    detail: str      # the shapes as the group names them
    rounds: int
    axis: int | None = None  # sum only

    @property
    def group(self):
        return f"{self.op} {self.pass_name} {self.detail}"


ROWS = (4096, 3072)  # GPT-2's MLP activations at B*T = 4096 tokens
SUM_SHAPE = (8192, 1024)
LOGITS = (1024, 50304)
PARAMS = (10_000_000,)

CASES = [
    Case("add", "forward", ROWS, "(4096, 3072) + (3072,)", 50),
    Case("add", "backward", ROWS, "(4096, 3072) + (3072,)", 50),
    Case("mul", "forward", ROWS, "(4096, 3072) * (3072,)", 50),
    Case("gelu", "forward", ROWS, "(4096, 3072)", 30),
    Case("gelu", "backward", ROWS, "(4096, 3072)", 30),
    Case("relu", "forward", ROWS, "(4096, 3072)", 50),
    Case("sum", "forward", SUM_SHAPE, "axis -1 of (8192, 1024)", 200, axis=-1),
    Case("sum", "forward", SUM_SHAPE, "axis 0 of (8192, 1024)", 200, axis=0),
    Case("cross_entropy", "forward", LOGITS, "(1024, 50304) int64 targets", 15),
    Case("cross_entropy", "forward+backward", LOGITS, "(1024, 50304) int64 targets", 15),
    Case("sgd_update", "step", PARAMS, "momentum 0.9 (10000000,)", 50),
]


# ---------------------------------------------------------------- inputs and outputs


@functools.lru_cache(maxsize=1)  # the cases of one op run back to back
def inputs(op, shape):
    """Random inputs, the same for every implementation (read-only for all of them)."""
    rng = np.random.default_rng(0)

    def normal(*dims):
        return rng.standard_normal(dims, dtype=_f32)

    rows, cols = shape if len(shape) == 2 else (shape[0], 1)
    if op in ("add", "mul"):
        return {"a": normal(rows, cols), "b": normal(cols), "grad_c": normal(rows, cols)}
    if op in ("gelu", "relu"):
        return {"x": normal(rows, cols), "grad_y": normal(rows, cols)}
    if op == "sum":
        return {"x": normal(rows, cols)}
    if op == "cross_entropy":
        return {"logits": normal(rows, cols), "target": rng.integers(0, cols, rows),
                "grad_loss": np.ones((), _f32)}
    if op == "sgd_update":  # param and momentum_buffer are updated in place: copied per case
        return {"grad": normal(rows), "param0": normal(rows), "momentum_buffer0": normal(rows)}
    raise ValueError(op)


def output_shapes(case):
    shape = case.shape
    if case.op in ("add", "mul"):
        return {"c": shape, "grad_a": shape, "grad_b": shape[1:]}
    if case.op in ("gelu", "relu"):
        return {"y": shape, "grad_x": shape}
    if case.op == "sum":
        return {"out": tuple(d for i, d in enumerate(shape) if i != case.axis % len(shape))}
    if case.op == "cross_entropy":
        return {"loss": (), "grad_logits": shape}
    return {}


def checked_outputs(case):
    if case.op in ("add", "mul"):
        return ("c",) if case.pass_name == "forward" else ("grad_a", "grad_b")
    if case.op in ("gelu", "relu"):
        return ("y",) if case.pass_name == "forward" else ("grad_x",)
    if case.op == "sum":
        return ("out",)
    if case.op == "cross_entropy":
        return ("loss",) if case.pass_name == "forward" else ("loss", "grad_logits")
    return ("param", "momentum_buffer")


def new_buffers(case):
    given = inputs(case.op, case.shape)
    buffers = {name: arr for name, arr in given.items() if not name.endswith("0")}
    buffers.update({name[:-1]: arr.copy() for name, arr in given.items() if name.endswith("0")})
    buffers.update({name: np.zeros(dims, _f32) for name, dims in output_shapes(case).items()})
    return SimpleNamespace(**buffers)


# ---------------------------------------------------------------- implementations
# Each builder takes (case, buffers) and returns (forward, backward): argument-less callables
# writing into the buffers; backward is None where the case has no backward pass.


def _pyengine(case, b):
    op = case.op
    if op in ("add", "mul"):
        forward_op = getattr(K, op)

        def add_backward():
            K.add_backward(b.grad_c, b.a, b.b, grad_a=b.grad_a, grad_b=b.grad_b)

        return lambda: forward_op(b.a, b.b, out=b.c), add_backward if op == "add" else None
    if op == "gelu":
        return (lambda: K.gelu(b.x, out=b.y),
                lambda: K.gelu_backward(b.grad_y, b.x, grad_x=b.grad_x))
    if op == "relu":
        return lambda: K.relu(b.x, out=b.y), None
    if op == "sum":
        return lambda: K.sum(b.x, axis=case.axis, out=b.out), None
    if op == "cross_entropy":
        return (lambda: K.cross_entropy(b.logits, b.target, out=b.loss),
                lambda: K.cross_entropy_backward(b.grad_loss, b.logits, b.target,
                                                 grad_logits=b.grad_logits))
    if op == "sgd_update":
        return (lambda: K.sgd_update(b.param, b.grad, b.momentum_buffer, lr=LR,
                                     momentum=MOMENTUM), None)
    raise ValueError(op)


_GELU_K = _f32(np.sqrt(2.0 / np.pi))
_GELU_C = _f32(0.044715)


def _numpy(case, b):
    op = case.op
    if op in ("add", "mul"):
        forward_op = np.add if op == "add" else np.multiply

        def add_backward():
            np.copyto(b.grad_a, b.grad_c)
            np.sum(b.grad_c, axis=0, out=b.grad_b)

        return lambda: forward_op(b.a, b.b, out=b.c), add_backward if op == "add" else None
    if op == "gelu":
        t, u = np.empty_like(b.x), np.empty_like(b.x)

        def inner_tanh():  # t = tanh(k (x + c x^3)), u = x^2
            np.multiply(b.x, b.x, out=u)
            np.multiply(u, _GELU_C, out=t)
            np.multiply(t, b.x, out=t)
            np.add(t, b.x, out=t)
            np.multiply(t, _GELU_K, out=t)
            np.tanh(t, out=t)

        def forward():  # y = 0.5 x (1 + t)
            inner_tanh()
            np.add(t, _f32(1), out=t)
            np.multiply(b.x, t, out=b.y)
            np.multiply(b.y, _f32(0.5), out=b.y)

        def backward():  # grad_x = grad_y 0.5 (1 + t + x k (1 + 3 c x^2) (1 - t^2))
            inner_tanh()
            np.multiply(u, _f32(3) * _GELU_C, out=u)
            np.add(u, _f32(1), out=u)
            np.multiply(u, _GELU_K, out=u)
            np.multiply(t, t, out=b.grad_x)
            np.subtract(_f32(1), b.grad_x, out=b.grad_x)
            np.multiply(u, b.grad_x, out=u)
            np.multiply(u, b.x, out=u)
            np.add(u, t, out=u)
            np.add(u, _f32(1), out=u)
            np.multiply(u, _f32(0.5), out=u)
            np.multiply(b.grad_y, u, out=b.grad_x)

        return forward, backward
    if op == "relu":
        return lambda: np.maximum(b.x, _f32(0), out=b.y), None
    if op == "sum":
        return lambda: np.sum(b.x, axis=case.axis, out=b.out), None
    if op == "cross_entropy":
        rows, cols = b.logits.shape
        exps = np.empty_like(b.logits)
        peak, total, lse = (np.empty((rows, 1), _f32) for _ in range(3))
        picked = np.empty(rows, _f32)
        flat_target = np.arange(rows) * cols + b.target  # index of each row's target
        flat_logits, flat_grad = b.logits.reshape(-1), b.grad_logits.reshape(-1)

        def forward():  # loss = mean(log(sum(exp(x - max))) + max - x[target])
            np.max(b.logits, axis=1, keepdims=True, out=peak)
            np.subtract(b.logits, peak, out=exps)
            np.exp(exps, out=exps)
            np.sum(exps, axis=1, keepdims=True, out=total)
            np.log(total, out=lse)
            np.add(lse, peak, out=lse)
            np.take(flat_logits, flat_target, out=picked)
            np.subtract(lse[:, 0], picked, out=picked)
            np.mean(picked, out=b.loss)

        def backward():  # grad = (exps / total - onehot) * grad_loss / rows
            scale = _f32(b.grad_loss / rows)
            np.divide(scale, total, out=lse)  # lse is free once the loss is out
            np.multiply(exps, lse, out=b.grad_logits)
            np.take(flat_grad, flat_target, out=picked)
            np.subtract(picked, scale, out=picked)
            np.put(flat_grad, flat_target, picked)

        return forward, backward
    if op == "sgd_update":
        scaled = np.empty_like(b.param)

        def step():  # buf = momentum buf + grad; param -= lr buf
            np.multiply(b.momentum_buffer, _f32(MOMENTUM), out=b.momentum_buffer)
            np.add(b.momentum_buffer, b.grad, out=b.momentum_buffer)
            np.multiply(b.momentum_buffer, _f32(LR), out=scaled)
            np.subtract(b.param, scaled, out=b.param)

        return step, None
    raise ValueError(op)


def _torch(case, b):
    import torch

    aten = torch.ops.aten
    t = SimpleNamespace(**{name: torch.from_numpy(arr) for name, arr in vars(b).items()})
    op = case.op
    if op in ("add", "mul"):
        forward_op = torch.add if op == "add" else torch.mul

        def add_backward():
            t.grad_a.copy_(t.grad_c)
            torch.sum(t.grad_c, dim=0, out=t.grad_b)

        return lambda: forward_op(t.a, t.b, out=t.c), add_backward if op == "add" else None
    if op == "gelu":
        return (lambda: aten.gelu.out(t.x, approximate="tanh", out=t.y),
                lambda: aten.gelu_backward.grad_input(t.grad_y, t.x, approximate="tanh",
                                                      grad_input=t.grad_x))
    if op == "relu":  # aten.relu.out is generated: relu (clamp_min into a new tensor) + copy_
        return lambda: aten.clamp_min.out(t.x, 0, out=t.y), None
    if op == "sum":
        return lambda: torch.sum(t.x, dim=case.axis, out=t.out), None
    if op == "cross_entropy":  # F.cross_entropy's eager path: log_softmax + nll_loss
        logp, grad_logp = torch.empty_like(t.logits), torch.empty_like(t.logits)
        total_weight = torch.empty((), dtype=torch.float32)
        mean, ignore_index = 1, -100  # reduction="mean"

        def forward():
            aten._log_softmax.out(t.logits, 1, False, out=logp)
            aten.nll_loss_forward.output(logp, t.target, None, mean, ignore_index,
                                         output=t.loss, total_weight=total_weight)

        def backward():
            aten.nll_loss_backward.grad_input(t.grad_loss, logp, t.target, None, mean,
                                              ignore_index, total_weight, grad_input=grad_logp)
            aten._log_softmax_backward_data.out(grad_logp, logp, 1, torch.float32,
                                                out=t.grad_logits)

        return forward, backward
    if op == "sgd_update":
        def step():  # torch.optim.SGD on CPU (_single_tensor_sgd), after the first step
            with torch.no_grad():
                t.momentum_buffer.mul_(MOMENTUM).add_(t.grad)
                t.param.add_(t.momentum_buffer, alpha=-LR)

        return step, None
    raise ValueError(op)


def _numba(case, b):
    import numba

    from . import numba_kernels as nk

    op = case.op
    chunks = numba.get_num_threads()
    if op in ("add", "mul"):
        forward_kernel = nk.add_rows if op == "add" else nk.mul_rows
        partial = np.empty((chunks, b.b.size), _f32)

        def add_backward():
            nk.add_rows_backward(b.grad_c, b.grad_a, b.grad_b, partial)

        return lambda: forward_kernel(b.a, b.b, b.c), add_backward if op == "add" else None
    if op in ("gelu", "relu"):
        x, y = b.x.reshape(-1), b.y.reshape(-1)
        grad_y, grad_x = b.grad_y.reshape(-1), b.grad_x.reshape(-1)
        if op == "relu":
            return lambda: nk.relu_forward(x, y), None
        return lambda: nk.gelu_forward(x, y), lambda: nk.gelu_backward(grad_y, x, grad_x)
    if op == "sum":
        if case.axis in (-1, 1):
            return lambda: nk.row_sum(b.x, b.out), None
        partial = np.empty((chunks, b.x.shape[1]), _f32)
        return lambda: nk.column_sum(b.x, b.out, partial), None
    if op == "cross_entropy":
        lse = np.empty(b.logits.shape[0], _f32)
        loss, grad_loss = b.loss.reshape(1), b.grad_loss.reshape(1)
        return (lambda: nk.cross_entropy_forward(b.logits, b.target, loss, lse),
                lambda: nk.cross_entropy_backward(grad_loss, b.logits, b.target, lse,
                                                  b.grad_logits))
    if op == "sgd_update":
        lr, momentum = _f32(LR), _f32(MOMENTUM)
        return (lambda: nk.sgd_momentum(b.param, b.grad, b.momentum_buffer, lr, momentum),
                None)
    raise ValueError(op)


BUILDERS = {"pyengine": _pyengine, "numpy": _numpy, "torch": _torch, "numba": _numba}


def make_case(impl, case):
    """Build a case and run it once, untimed (JIT warm-up, first touch, a backward's forward).

    Returns (the callable to time, {output name: array after the first run}).
    """
    buffers = new_buffers(case)
    forward, backward = BUILDERS[impl](case, buffers)
    forward()
    if case.pass_name in ("backward", "forward+backward"):
        backward()
    outputs = {name: getattr(buffers, name) for name in checked_outputs(case)}
    if case.pass_name == "backward":
        return backward, outputs
    if case.pass_name == "forward+backward":
        def forward_backward():
            forward()
            backward()

        return forward_backward, outputs
    return forward, outputs


# ---------------------------------------------------------------- the reference check


_REFERENCE_OUTPUTS = {}  # case -> pyengine's outputs, kept while its group runs


def reference_outputs(case):
    if case not in _REFERENCE_OUTPUTS:
        _REFERENCE_OUTPUTS.clear()  # one case at a time: cross-entropy's are 200 MB
        _, outputs = make_case(REFERENCE, case)
        _REFERENCE_OUTPUTS[case] = outputs
    return _REFERENCE_OUTPUTS[case]


def check(impl, case, outputs):
    for name, want in reference_outputs(case).items():
        atol = RTOL * float(np.abs(want).max())
        np.testing.assert_allclose(outputs[name], want, rtol=RTOL, atol=atol,
                                   err_msg=f"{impl} {case.group}: {name} differs from {REFERENCE}")


# ---------------------------------------------------------------- benchmarks


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.group)
def test_op(benchmark, threads, case, impl):
    if impl in OPTIONAL_IMPLS:
        pytest.importorskip(impl)
    timed, outputs = make_case(impl, case)
    if impl == REFERENCE:
        _REFERENCE_OUTPUTS.clear()
        _REFERENCE_OUTPUTS[case] = {name: arr.copy() for name, arr in outputs.items()}
    else:
        check(impl, case, outputs)
    del outputs
    benchmark.group = case.group
    benchmark.extra_info.update(threads=threads, op=case.op, pass_name=case.pass_name,
                                shape=list(case.shape), axis=case.axis)
    benchmark.pedantic(timed, rounds=case.rounds, iterations=1, warmup_rounds=1)
