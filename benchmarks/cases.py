"""Inputs, output buffers, correctness check and round counts for one benchmark case.

A case is (impl, kernel, shape, pass). Inputs are random float32 arrays,
identical for every implementation (cached per kernel and shape); outputs are
fresh zeroed buffers per case, so accumulating kernels start from zero.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np

from . import impls

PASSES = ("forward", "backward", "forward+backward")
REFERENCE = "pyengine"

FORWARD_OUTPUTS = {"matmul": ("c",), "softmax": ("y",), "layer_norm": ("y", "mean", "rstd")}
BACKWARD_OUTPUTS = {"matmul": (), "softmax": ("grad_x",),
                    "layer_norm": ("grad_x", "grad_weight", "grad_bias")}

RTOL = 1e-3  # loose: the check only guards against timing a wrong kernel


@functools.cache
def inputs(kernel, shape):
    rng = np.random.default_rng(0)
    rows, cols = shape

    def normal(*dims):
        return rng.standard_normal(dims, dtype=np.float32)

    if kernel == "matmul":
        return {"a": normal(rows, cols), "b": normal(cols, cols)}
    if kernel == "softmax":
        return {"x": normal(rows, cols), "grad_y": normal(rows, cols)}
    return {"x": normal(rows, cols), "weight": normal(cols), "bias": normal(cols),
            "grad_y": normal(rows, cols)}


def output_shapes(kernel, shape):
    rows, cols = shape
    if kernel == "matmul":
        return {"c": (rows, cols)}
    if kernel == "softmax":
        return {"y": shape, "grad_x": shape}
    return {"y": shape, "mean": (rows,), "rstd": (rows,), "grad_x": shape,
            "grad_weight": (cols,), "grad_bias": (cols,)}


def new_buffers(kernel, shape):
    outputs = {name: np.zeros(dims, dtype=np.float32)
               for name, dims in output_shapes(kernel, shape).items()}
    return SimpleNamespace(**inputs(kernel, shape), **outputs)


def checked_outputs(kernel, pass_name):
    backward = BACKWARD_OUTPUTS[kernel] if pass_name != "forward" else ()
    return FORWARD_OUTPUTS[kernel] + backward


def make_case(impl, kernel, shape, pass_name):
    """Build a case and run it once, untimed (JIT warm-up, forward outputs for a backward).

    Returns (the callable to time, {output name: array after the first run}).
    """
    buffers = new_buffers(kernel, shape)
    forward, backward = impls.build(impl, kernel, buffers)
    forward()
    if pass_name != "forward":
        backward()
    outputs = {name: getattr(buffers, name) for name in checked_outputs(kernel, pass_name)}
    return _timed_call(forward, backward, pass_name), outputs


def _timed_call(forward, backward, pass_name):
    if pass_name == "forward":
        return forward
    if pass_name == "backward":
        return backward

    def forward_backward():
        forward()
        backward()

    return forward_backward


def check_against_reference(impl, kernel, shape, pass_name, outputs):
    """Fail when impl's first-run outputs disagree with pyengine's on the same inputs."""
    if impl == REFERENCE:
        return
    _, expected = make_case(REFERENCE, kernel, shape, pass_name)
    for name, want in expected.items():
        atol = RTOL * float(np.abs(want).max())
        np.testing.assert_allclose(
            outputs[name], want, rtol=RTOL, atol=atol,
            err_msg=f"{impl} {kernel} {pass_name} {shape}: {name} differs from {REFERENCE}")


def rounds(impl, kernel, shape):
    """Timed rounds per case, sized so the whole suite runs in a few minutes on 2 cores."""
    if kernel == "matmul":
        n = shape[0]
        if n >= 2048:
            return 5 if impl == "numba" else 10
        return {256: 200, 512: 100, 1024: 30}.get(n, 10)
    return 50 if shape[0] * shape[1] > 4_000_000 else 100
