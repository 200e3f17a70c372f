"""The activations, unary math and the Adam step added with the op registry, beside their peers.

- each one-input kernel (sigmoid, silu, sqrt, rsqrt, log, abs, square, clamp, exact GELU) on (4096, 3072):
  forward, and forward+backward for sigmoid and silu (the gated feed-forwards' activations);
- ``adam_update`` (AdamW, decoupled decay) on a 10M-element parameter.

numpy runs its ufuncs into the same buffers; torch runs the aten out= kernels (and
``torch._fused_adamw_``, what ``AdamW(fused=True)`` calls). The base (base.py) makes the inputs
and buffers from the declarations, checks every peer against pyengine and times the rows of a
group back to back.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

import pyengine.kernels as K

from base import Case, kernel, parametrize, run

_f32 = np.float32


def _erf(x):
    from scipy.special import erf  # scipy comes with scikit-learn

    return erf(x)

ROWS = (4096, 3072)
PARAMS = (10_000_000,)
LR, STEP, BETAS, EPS, DECAY = 1e-3, 10, (0.9, 0.999), 1e-8, 0.01
CLAMP = (-0.5, 1.5)

# name: (numpy forward into out, torch aten forward into out)
UNARY = {
    "sigmoid": (lambda x, y: np.divide(1, 1 + np.exp(-x), out=y), "sigmoid"),
    "silu": (lambda x, y: np.divide(x, 1 + np.exp(-x), out=y), "silu"),
    "sqrt": (lambda x, y: np.sqrt(x, out=y), "sqrt"),
    "rsqrt": (lambda x, y: np.divide(1, np.sqrt(x), out=y), "rsqrt"),
    "log": (lambda x, y: np.log(x, out=y), "log"),
    "abs": (lambda x, y: np.abs(x, out=y), "abs"),
    "square": (lambda x, y: np.multiply(x, x, out=y), "square"),
    "clamp": (lambda x, y: np.clip(x, *CLAMP, out=y), "clamp"),
    "gelu_erf": (lambda x, y: np.multiply(0.5 * x, 1 + _erf(x / np.sqrt(_f32(2))), out=y), "gelu"),  # exact GELU
}
WITH_BACKWARD = ("sigmoid", "silu")

CASES = [Case(op, "forward", f"{op} forward (4096, 3072)", ROWS, rounds=30) for op in UNARY]
CASES += [Case(op, "forward+backward", f"{op} forward+backward (4096, 3072)", ROWS, rounds=20)
          for op in WITH_BACKWARD]
CASES.append(Case("adam_update", "step", "adamw step (10000000,)", PARAMS, rounds=30))


def _unary_inputs(case):
    rng = np.random.default_rng(0)  # positive: the domain of sqrt, rsqrt and log
    return {"x": np.abs(rng.standard_normal(case.shape, dtype=_f32)) + _f32(0.5),
            "grad_y": rng.standard_normal(case.shape, dtype=_f32)}


def _tensors(b):
    import torch

    return SimpleNamespace(**{name: torch.from_numpy(arr) for name, arr in vars(b).items()})


def _register_unary(op, numpy_forward, aten_name):
    ops = (f"{op}_forward", f"{op}_backward") if op in WITH_BACKWARD else (f"{op}_forward",)
    options = (lambda case: {"min": CLAMP[0], "max": CLAMP[1]}) if op == "clamp" else None
    spec = kernel(op, inputs=_unary_inputs, ops=ops, options=options)
    pe_forward = getattr(K, op)
    kwargs = {"min": CLAMP[0], "max": CLAMP[1]} if op == "clamp" else {}

    @spec.impl("pyengine")
    def pyengine_unary(case, b):
        backward = getattr(K, op + "_backward", None)
        saved = "y" if op == "sigmoid" else "x"
        return (lambda: pe_forward(b.x, out=b.y, **kwargs),
                (lambda: backward(b.grad_y, getattr(b, saved), grad_x=b.grad_x))
                if op in WITH_BACKWARD else None)

    @spec.impl("numpy")
    def numpy_unary(case, b):
        def backward():  # the derivative through the same ufuncs, into grad_x
            s = 1 / (1 + np.exp(-b.x))
            d = s * (1 - s) if op == "sigmoid" else s * (1 + b.x * (1 - s))
            np.multiply(b.grad_y, d, out=b.grad_x)

        return lambda: numpy_forward(b.x, b.y), backward if op in WITH_BACKWARD else None

    @spec.impl("torch")
    def torch_unary(case, b):
        import torch

        aten, t = torch.ops.aten, _tensors(b)
        if op == "clamp":
            forward = lambda: aten.clamp.out(t.x, *CLAMP, out=t.y)  # noqa: E731
        elif op == "square":
            forward = lambda: torch.square(t.x, out=t.y)  # noqa: E731
        else:
            forward = lambda: getattr(aten, aten_name).out(t.x, out=t.y)  # noqa: E731
        backward = None
        if op == "sigmoid":
            backward = lambda: aten.sigmoid_backward.grad_input(t.grad_y, t.y, grad_input=t.grad_x)  # noqa: E731
        elif op == "silu":
            backward = lambda: aten.silu_backward.grad_input(t.grad_y, t.x, grad_input=t.grad_x)  # noqa: E731
        return forward, backward


for _op, (_numpy_forward, _aten) in UNARY.items():
    _register_unary(_op, _numpy_forward, _aten)


def _adam_inputs(case):
    rng = np.random.default_rng(0)
    n = case.shape[0]
    return {"param": rng.standard_normal(n, dtype=_f32), "grad": rng.standard_normal(n, dtype=_f32),
            "exp_avg": rng.standard_normal(n, dtype=_f32) * _f32(0.1),
            "exp_avg_sq": np.abs(rng.standard_normal(n, dtype=_f32)) * _f32(0.01)}


adam = kernel("adam_update", inputs=_adam_inputs, ops=("adam_update",),
              options=lambda case: {"lr": LR, "step": STEP, "decoupled": True, "weight_decay": DECAY})


@adam.impl("pyengine")
def pyengine_adam(case, b):
    return (lambda: K.adam_update(b.param, b.exp_avg, b.exp_avg_sq, b.grad, lr=LR, step=STEP,
                                  beta1=BETAS[0], beta2=BETAS[1], eps=EPS, weight_decay=DECAY,
                                  decoupled=True), None)


@adam.impl("numpy")
def numpy_adam(case, b):
    b1, b2 = BETAS
    step_size, bias2_sqrt = LR / (1 - b1**STEP), np.sqrt(1 - b2**STEP)

    def step():
        b.param *= _f32(1 - LR * DECAY)
        b.exp_avg += _f32(1 - b1) * (b.grad - b.exp_avg)
        b.exp_avg_sq *= _f32(b2)
        b.exp_avg_sq += _f32(1 - b2) * b.grad * b.grad
        b.param -= _f32(step_size) * b.exp_avg / (np.sqrt(b.exp_avg_sq) / _f32(bias2_sqrt) + _f32(EPS))

    return step, None


@adam.impl("torch")
def torch_adam(case, b):  # what torch.optim.AdamW(fused=True).step() runs for one tensor
    import torch

    t = _tensors(b)
    steps = [torch.tensor(float(STEP - 1))]

    def step():
        steps[0].fill_(STEP - 1)  # the fused kernel increments it to STEP first
        torch._fused_adamw_([t.param], [t.grad], [t.exp_avg], [t.exp_avg_sq], [], steps, lr=LR,
                            beta1=BETAS[0], beta2=BETAS[1], weight_decay=DECAY, eps=EPS,
                            amsgrad=False, maximize=False)

    return step, None


@parametrize(CASES)
def test_pointwise(benchmark, threads, case, impl):
    run(benchmark, threads, case, impl)
