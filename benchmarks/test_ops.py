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
- ``sgd_update`` with momentum 0.9 on a 10M-element parameter (one step after the first);
- ``fill`` of 10M floats with 0, how a captured graph zeroes its gradient buffers.

Every implementation writes into preallocated buffers (numpy ufuncs with ``out=``, torch aten
``.out`` ops or in-place tensor ops without autograd, numba's kernels in ``numba_kernels.py``),
so no allocation is timed; numpy's scratch arrays are allocated when the case is built.
pyengine's backward kernels accumulate into their gradient buffers (``+=``); the peers overwrite
theirs, as in ``test_kernels.py``. torch's SGD step is ``torch.optim.SGD``'s CPU path
(``_single_tensor_sgd``: ``buf.mul_(m).add_(grad)``, ``param.add_(buf, alpha=-lr)``); its relu is
``aten.clamp_min.out`` (aten's relu kernel: ``aten.relu.out`` allocates a result and copies it).

Each op is a kernel of the benchmark base (base.py) with one builder per implementation
(``@add.impl("numpy")``...): the base makes the inputs and the buffers (named and shaped by the
pyengine declarations each op names), runs each case once untimed (JIT compilation, first
touch, a backward's forward), checks each peer's result against pyengine's on the same inputs
and times it; the four rows of a group run back to back. The file takes about 70 s at
``--threads 2`` on 2 cores.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

import pyengine.kernels as K

from base import Case, kernel, parametrize, run

LR, MOMENTUM = 0.01, 0.9

_f32 = np.float32

ROWS = (4096, 3072)  # GPT-2's MLP activations at B*T = 4096 tokens
SUM_SHAPE = (8192, 1024)
LOGITS = (1024, 50304)
PARAMS = (10_000_000,)


def _case(op, pass_name, shape, detail, rounds, axis=None):
    """A group named op, pass and shapes; the sum's axis is its spec."""
    return Case(op, pass_name, f"{op} {pass_name} {detail}", shape, spec=axis, rounds=rounds,
                info=(("axis", axis),) if axis is not None else ())


CASES = [
    _case("add", "forward", ROWS, "(4096, 3072) + (3072,)", 50),
    _case("add", "backward", ROWS, "(4096, 3072) + (3072,)", 50),
    _case("mul", "forward", ROWS, "(4096, 3072) * (3072,)", 50),
    _case("gelu", "forward", ROWS, "(4096, 3072)", 30),
    _case("gelu", "backward", ROWS, "(4096, 3072)", 30),
    _case("relu", "forward", ROWS, "(4096, 3072)", 50),
    _case("sum", "forward", SUM_SHAPE, "axis -1 of (8192, 1024)", 200, axis=-1),
    _case("sum", "forward", SUM_SHAPE, "axis 0 of (8192, 1024)", 200, axis=0),
    _case("cross_entropy", "forward", LOGITS, "(1024, 50304) int64 targets", 15),
    _case("cross_entropy", "forward+backward", LOGITS, "(1024, 50304) int64 targets", 15),
    _case("sgd_update", "step", PARAMS, "momentum 0.9 (10000000,)", 50),
    _case("fill", "step", PARAMS, "zeros (10000000,)", 50),
]


# ---------------------------------------------------------------- the kernels and their inputs
# Random inputs, the same for every implementation (read-only for all of them; sgd_update's
# param and momentum_buffer are declared inout, so the base copies them per case).


def _normal(rng, *dims):
    return rng.standard_normal(dims, dtype=_f32)


def _broadcast_inputs(case):
    rng = np.random.default_rng(0)
    rows, cols = case.shape
    return {"a": _normal(rng, rows, cols), "b": _normal(rng, cols),
            "grad_out": _normal(rng, rows, cols)}


def _activation_inputs(case):
    rng = np.random.default_rng(0)
    return {"x": _normal(rng, *case.shape), "grad_y": _normal(rng, *case.shape)}


def _sum_inputs(case):
    return {"x": _normal(np.random.default_rng(0), *case.shape)}


def _cross_entropy_inputs(case):
    rng = np.random.default_rng(0)
    rows, cols = case.shape
    return {"logits": _normal(rng, rows, cols), "target": rng.integers(0, cols, rows),
            "grad_loss": np.ones((), _f32)}


def _sgd_inputs(case):
    rng = np.random.default_rng(0)
    n = case.shape[0]
    return {"grad": _normal(rng, n), "param": _normal(rng, n), "momentum_buffer": _normal(rng, n)}


def _fill_inputs(case):
    return {"out": _normal(np.random.default_rng(0), *case.shape)}


def _sum_axes(case):
    first = case.spec % len(case.shape)
    return {"axis_begin": first, "axis_end": first + 1}


add = kernel("add", inputs=_broadcast_inputs, ops=("binary_forward", "binary_backward"),
             options=lambda case: {"op": "add"})
mul = kernel("mul", inputs=_broadcast_inputs, ops=("binary_forward",),
             options=lambda case: {"op": "mul"})
gelu = kernel("gelu", inputs=_activation_inputs, ops=("gelu_forward", "gelu_backward"))
relu = kernel("relu", inputs=_activation_inputs, ops=("relu_forward",))
sum_ = kernel("sum", inputs=_sum_inputs, ops=("sum_forward",), options=_sum_axes)
cross_entropy = kernel("cross_entropy", inputs=_cross_entropy_inputs,
                       ops=("cross_entropy_forward", "cross_entropy_backward"))
sgd_update = kernel("sgd_update", inputs=_sgd_inputs, ops=("sgd_update",),
                    options=lambda case: {"lr": LR, "momentum": MOMENTUM})
fill = kernel("fill", inputs=_fill_inputs, ops=("fill",))


# ---------------------------------------------------------------- pyengine


@add.impl("pyengine")
def pyengine_add(case, b):
    return (lambda: K.add(b.a, b.b, out=b.out),
            lambda: K.add_backward(b.grad_out, b.a, b.b, grad_a=b.grad_a, grad_b=b.grad_b))


@mul.impl("pyengine")
def pyengine_mul(case, b):
    return lambda: K.mul(b.a, b.b, out=b.out), None


@gelu.impl("pyengine")
def pyengine_gelu(case, b):
    return (lambda: K.gelu(b.x, out=b.y),
            lambda: K.gelu_backward(b.grad_y, b.x, grad_x=b.grad_x))


@relu.impl("pyengine")
def pyengine_relu(case, b):
    return lambda: K.relu(b.x, out=b.y), None


@sum_.impl("pyengine")
def pyengine_sum(case, b):
    return lambda: K.sum(b.x, axis=case.spec, out=b.out), None


@cross_entropy.impl("pyengine")
def pyengine_cross_entropy(case, b):
    return (lambda: K.cross_entropy(b.logits, b.target, out=b.loss),
            lambda: K.cross_entropy_backward(b.grad_loss, b.logits, b.target,
                                             grad_logits=b.grad_logits))


@sgd_update.impl("pyengine")
def pyengine_sgd_update(case, b):
    return (lambda: K.sgd_update(b.param, b.grad, b.momentum_buffer, lr=LR, momentum=MOMENTUM),
            None)


@fill.impl("pyengine")
def pyengine_fill(case, b):
    return lambda: K.fill(b.out), None


# ---------------------------------------------------------------- numpy (ufuncs with out=)


_GELU_K = _f32(np.sqrt(2.0 / np.pi))
_GELU_C = _f32(0.044715)


@add.impl("numpy")
def numpy_add(case, b):
    def backward():
        np.copyto(b.grad_a, b.grad_out)
        np.sum(b.grad_out, axis=0, out=b.grad_b)

    return lambda: np.add(b.a, b.b, out=b.out), backward


@mul.impl("numpy")
def numpy_mul(case, b):
    return lambda: np.multiply(b.a, b.b, out=b.out), None


@gelu.impl("numpy")
def numpy_gelu(case, b):
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


@relu.impl("numpy")
def numpy_relu(case, b):
    return lambda: np.maximum(b.x, _f32(0), out=b.y), None


@sum_.impl("numpy")
def numpy_sum(case, b):
    return lambda: np.sum(b.x, axis=case.spec, out=b.out), None


@cross_entropy.impl("numpy")
def numpy_cross_entropy(case, b):
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


@sgd_update.impl("numpy")
def numpy_sgd_update(case, b):
    scaled = np.empty_like(b.param)

    def step():  # buf = momentum buf + grad; param -= lr buf
        np.multiply(b.momentum_buffer, _f32(MOMENTUM), out=b.momentum_buffer)
        np.add(b.momentum_buffer, b.grad, out=b.momentum_buffer)
        np.multiply(b.momentum_buffer, _f32(LR), out=scaled)
        np.subtract(b.param, scaled, out=b.param)

    return step, None


@fill.impl("numpy")
def numpy_fill(case, b):
    return lambda: b.out.fill(0), None


# ---------------------------------------------------------------- torch (aten .out ops, no autograd)


def _tensors(b):
    import torch

    return SimpleNamespace(**{name: torch.from_numpy(arr) for name, arr in vars(b).items()})


@add.impl("torch")
def torch_add(case, b):
    import torch

    t = _tensors(b)

    def backward():
        t.grad_a.copy_(t.grad_out)
        torch.sum(t.grad_out, dim=0, out=t.grad_b)

    return lambda: torch.add(t.a, t.b, out=t.out), backward


@mul.impl("torch")
def torch_mul(case, b):
    import torch

    t = _tensors(b)
    return lambda: torch.mul(t.a, t.b, out=t.out), None


@gelu.impl("torch")
def torch_gelu(case, b):
    import torch

    aten, t = torch.ops.aten, _tensors(b)
    return (lambda: aten.gelu.out(t.x, approximate="tanh", out=t.y),
            lambda: aten.gelu_backward.grad_input(t.grad_y, t.x, approximate="tanh",
                                                  grad_input=t.grad_x))


@relu.impl("torch")
def torch_relu(case, b):  # aten.relu.out is generated: relu (clamp_min into a new tensor) + copy_
    import torch

    t = _tensors(b)
    return lambda: torch.ops.aten.clamp_min.out(t.x, 0, out=t.y), None


@sum_.impl("torch")
def torch_sum(case, b):
    import torch

    t = _tensors(b)
    return lambda: torch.sum(t.x, dim=case.spec, out=t.out), None


@cross_entropy.impl("torch")
def torch_cross_entropy(case, b):  # F.cross_entropy's eager path: log_softmax + nll_loss
    import torch

    aten, t = torch.ops.aten, _tensors(b)
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


@sgd_update.impl("torch")
def torch_sgd_update(case, b):
    import torch

    t = _tensors(b)

    def step():  # torch.optim.SGD on CPU (_single_tensor_sgd), after the first step
        with torch.no_grad():
            t.momentum_buffer.mul_(MOMENTUM).add_(t.grad)
            t.param.add_(t.momentum_buffer, alpha=-LR)

    return step, None


@fill.impl("torch")
def torch_fill(case, b):
    t = _tensors(b)
    return lambda: t.out.zero_(), None  # what optimizer.zero_grad(set_to_none=False) calls


# ---------------------------------------------------------------- numba (numba_kernels.py)


def _partial_rows(cols):
    """One row of partial sums per numba thread, for the column reductions."""
    import numba

    return np.empty((numba.get_num_threads(), cols), _f32)


@add.impl("numba")
def numba_add(case, b):
    import numba_kernels as nk

    partial = _partial_rows(b.b.size)
    return (lambda: nk.add_rows(b.a, b.b, b.out),
            lambda: nk.add_rows_backward(b.grad_out, b.grad_a, b.grad_b, partial))


@mul.impl("numba")
def numba_mul(case, b):
    import numba_kernels as nk

    return lambda: nk.mul_rows(b.a, b.b, b.out), None


@gelu.impl("numba")
def numba_gelu(case, b):
    import numba_kernels as nk

    x, y = b.x.reshape(-1), b.y.reshape(-1)
    grad_y, grad_x = b.grad_y.reshape(-1), b.grad_x.reshape(-1)
    return lambda: nk.gelu_forward(x, y), lambda: nk.gelu_backward(grad_y, x, grad_x)


@relu.impl("numba")
def numba_relu(case, b):
    import numba_kernels as nk

    x, y = b.x.reshape(-1), b.y.reshape(-1)
    return lambda: nk.relu_forward(x, y), None


@sum_.impl("numba")
def numba_sum(case, b):
    import numba_kernels as nk

    if case.spec in (-1, 1):
        return lambda: nk.row_sum(b.x, b.out), None
    partial = _partial_rows(b.x.shape[1])
    return lambda: nk.column_sum(b.x, b.out, partial), None


@cross_entropy.impl("numba")
def numba_cross_entropy(case, b):
    import numba_kernels as nk

    lse = np.empty(b.logits.shape[0], _f32)
    loss, grad_loss = b.loss.reshape(1), b.grad_loss.reshape(1)
    return (lambda: nk.cross_entropy_forward(b.logits, b.target, loss, lse),
            lambda: nk.cross_entropy_backward(grad_loss, b.logits, b.target, lse,
                                              b.grad_logits))


@sgd_update.impl("numba")
def numba_sgd_update(case, b):
    import numba_kernels as nk

    lr, momentum = _f32(LR), _f32(MOMENTUM)
    return lambda: nk.sgd_momentum(b.param, b.grad, b.momentum_buffer, lr, momentum), None


@fill.impl("numba")
def numba_fill(case, b):
    import numba_kernels as nk

    return lambda: nk.fill(b.out, _f32(0.0)), None


# ---------------------------------------------------------------- benchmarks


@parametrize(CASES)
def test_op(benchmark, threads, case, impl):
    run(benchmark, threads, case, impl)
