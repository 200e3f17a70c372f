"""Shared kernel-test helpers, in the spirit of tinygrad's ``helper_test_op``.

The same random float32 inputs go into a pyengine kernel, into a float64
numpy reference and (when installed) into PyTorch autograd in float64. The
forward outputs and every input gradient are compared with explicit
tolerances; a finite-difference checker validates the analytic backward of a
small problem independently of any reference formula.
"""

from __future__ import annotations

import numpy as np

try:  # optional: without torch the numpy references still run, torch checks are skipped
    import torch
except ImportError:  # pragma: no cover - exercised only where torch is absent
    torch = None

F32, F64 = np.float32, np.float64


def randn(rng, *shape, scale=1.0, shift=0.0) -> np.ndarray:
    """float32 normal samples, C-contiguous."""
    return np.array(rng.standard_normal(shape) * scale + shift, dtype=F32, order="C")


def away_from_zero(rng, *shape, margin=0.5) -> np.ndarray:
    """float32 samples with |x| >= margin (safe divisors, relu/pow away from kinks)."""
    x = rng.standard_normal(shape)
    return np.array(np.sign(x + (x == 0)) * (margin + np.abs(x)), dtype=F32, order="C")


def unbroadcast(grad: np.ndarray, shape) -> np.ndarray:
    """Sum a gradient of a broadcast result back to an operand's shape."""
    shape = tuple(shape)
    grad = grad.sum(axis=tuple(range(grad.ndim - len(shape)))) if grad.ndim > len(shape) else grad
    axes = tuple(i for i, d in enumerate(shape) if d == 1 and grad.shape[i] != 1)
    return grad.sum(axis=axes, keepdims=True).reshape(shape) if axes else grad.reshape(shape)


def assert_close(actual, expected, *, atol, rtol, what=""):
    """allclose with a shape check; NaN matches NaN and inf matches inf of the same sign."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual.astype(F64), expected.astype(F64), atol=atol, rtol=rtol,
                               err_msg=what)


def _tuple(x) -> tuple:
    return x if isinstance(x, tuple) else (x,)


def helper_test_op(inputs, pe_fwd, np_fwd, torch_fwd=None, pe_bwd=None, np_bwd=None, *,
                   atol=1e-6, rtol=1e-5, grad_atol=None, grad_rtol=None, seed=0):
    """Compare a pyengine op with references, forward and backward.

    inputs:    float32 arrays, the op's differentiable inputs (integer arguments such as
               class targets are closed over by the callables).
    pe_fwd:    ``pe_fwd(*inputs)`` -> array or tuple of arrays (pyengine).
    np_fwd:    ``np_fwd(*inputs_f64)`` -> the same outputs in float64.
    torch_fwd: ``torch_fwd(*tensors_f64)`` -> tensor or tuple, compared output by output.
    pe_bwd:    ``pe_bwd(g, inputs, outputs, grads)`` -> one gradient per input (None where the
               op has none). ``grads`` is None (the kernel allocates) or a tuple of buffers
               to accumulate into, as the pyengine API takes them.
    np_bwd:    ``np_bwd(g_f64, *inputs_f64)`` -> float64 gradients, one per input.

    The gradient is that of ``sum(outputs[0] * g)`` with a random upstream g. The backward
    is also run into pre-filled non-zero buffers, which must come back as ``init + grad``.
    Returns (outputs, grads) of pyengine.
    """
    grad_atol = atol if grad_atol is None else grad_atol
    grad_rtol = rtol if grad_rtol is None else grad_rtol
    rng = np.random.default_rng(seed)
    inputs = [np.array(x, dtype=F32, order="C") for x in inputs]  # copies; keeps 0-d
    originals = [x.copy() for x in inputs]
    inputs64 = [x.astype(F64) for x in inputs]

    outputs = _tuple(pe_fwd(*inputs))
    for i, (out, ref) in enumerate(zip(outputs, _tuple(np_fwd(*inputs64)), strict=True)):
        assert out.dtype == F32, f"output {i} has dtype {out.dtype}"
        assert_close(out, ref, atol=atol, rtol=rtol, what=f"forward output {i} vs numpy")

    tensors = None
    if torch is not None and torch_fwd is not None:
        tensors = [torch.tensor(x, requires_grad=True) for x in inputs64]
        torch_out = _tuple(torch_fwd(*tensors))
        for i, ref in enumerate(torch_out):
            assert_close(outputs[i], ref.detach().numpy(), atol=atol, rtol=rtol,
                         what=f"forward output {i} vs torch")

    if pe_bwd is None:
        return outputs, None
    g = randn(rng, *outputs[0].shape)
    grads = tuple(pe_bwd(g, inputs, outputs, None))
    assert len(grads) == len(inputs)
    for i, (x, orig) in enumerate(zip(inputs, originals)):
        np.testing.assert_array_equal(x, orig, err_msg=f"input {i} was modified")

    if np_bwd is not None:
        for i, (grad, ref) in enumerate(zip(grads, np_bwd(g.astype(F64), *inputs64), strict=True)):
            if grad is not None:
                assert_close(grad, ref, atol=grad_atol, rtol=grad_rtol, what=f"grad {i} vs numpy")
    if tensors is not None:
        wanted = [t for t, grad in zip(tensors, grads) if grad is not None]
        torch_grads = iter(torch.autograd.grad(torch_out[0], wanted,
                                               grad_outputs=torch.tensor(g.astype(F64)),
                                               allow_unused=True))
        for i, grad in enumerate(grads):
            if grad is not None:
                ref = next(torch_grads)
                ref = np.zeros(grad.shape) if ref is None else ref.numpy()
                assert_close(grad, ref, atol=grad_atol, rtol=grad_rtol, what=f"grad {i} vs torch")

    # Gradients accumulate: a pre-filled buffer comes back as init + grad, in place.
    init = tuple(None if grad is None else randn(rng, *grad.shape) for grad in grads)
    buffers = tuple(None if b is None else b.copy() for b in init)
    again = tuple(pe_bwd(g, inputs, outputs, buffers))
    for i, (buf, res, b0, grad) in enumerate(zip(buffers, again, init, grads)):
        if buf is not None:
            assert res is buf, f"grad {i} was not written into the given buffer"
            assert_close(buf, b0.astype(F64) + grad, atol=grad_atol + 1e-6, rtol=grad_rtol,
                         what=f"grad {i} accumulated into a non-zero buffer")
    return outputs, grads


def check_finite_differences(inputs, pe_fwd, pe_bwd, *, eps=1e-2, atol=3e-3, rtol=3e-3, seed=1):
    """Central differences of L = sum(pe_fwd(*inputs)[0] * g) against pe_bwd's gradients.

    Every element of every differentiable input (float32) is moved by +-eps, the step that
    float32 actually represents is used as the denominator, and L is summed in float64 from
    the float32 outputs. Tolerance: the float32 forward carries a relative rounding error of
    ~6e-8 per element, so L is off by ~1e-7 * sum|out * g|; dividing by the step 2 * eps
    (2e-2) magnifies that to ~5e-6 * sum|out * g|, i.e. ~1e-4 for the small problems (tens of
    elements, O(1) values) this is meant for; the O(eps^2) truncation error of a central
    difference is of the same size for the smooth ops here (observed worst: ~2e-4). Defaults
    atol = rtol = 3e-3 keep a 10x margin over that, while a wrong derivative (a missing term,
    a factor off by 1% or more) fails.
    """
    rng = np.random.default_rng(seed)
    inputs = [np.array(x, dtype=F32, order="C") for x in inputs]
    outputs = _tuple(pe_fwd(*inputs))
    g = randn(rng, *outputs[0].shape)
    analytic = tuple(pe_bwd(g, inputs, outputs, None))

    def loss() -> float:
        return float(np.sum(_tuple(pe_fwd(*inputs))[0].astype(F64) * g.astype(F64)))

    for i, (x, grad) in enumerate(zip(inputs, analytic, strict=True)):
        if grad is None:
            continue
        numeric = np.zeros(x.shape, dtype=F64)
        for idx in np.ndindex(*x.shape):
            orig = x[idx]
            x[idx] = hi = F32(orig + F32(eps))
            l_hi = loss()
            x[idx] = lo = F32(orig - F32(eps))
            l_lo = loss()
            x[idx] = orig
            numeric[idx] = (l_hi - l_lo) / (F64(hi) - F64(lo))
        assert_close(grad, numeric, atol=atol, rtol=rtol,
                     what=f"grad {i}: analytic vs central differences (eps={eps})")
    return analytic
