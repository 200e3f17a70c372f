"""Bad inputs at the binding boundary raise TypeError / ValueError that name the op and show the
shapes, through ``pyengine._C`` directly and through ``pyengine.kernels``; nothing crashes."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import op_cases
import pytest

import pyengine
from pyengine import _C, registry
from pyengine import kernels as K


def f32(*shape, value=1.0):
    return np.full(shape, value, dtype=np.float32)


def read_only(*shape):
    a = f32(*shape)
    a.setflags(write=False)
    return a


def transposed(rows, cols):
    """A float32 (rows, cols) view that is not C-contiguous."""
    return f32(cols, rows).T


T3 = np.array([0, 2, 1], dtype=np.int64)
G11 = ((1, 1), (0, 0), (1, 1))  # conv2d stride, padding, dilation


def params(cases):
    """pytest params named by each case's id."""
    return [pytest.param(*c, id=c[0]) for c in cases]

# (id, call, exception, fragments that must all appear in the message)
C_CASES = [
    # dtype, layout and type of the arguments
    ("float64", lambda: _C.softmax_forward(f32(3, 4), np.ones((3, 4))), TypeError,
     ["softmax_forward", "'x'", "float32", "float64", "(3, 4)"]),
    ("int32", lambda: _C.relu_forward(f32(2, 5), np.ones((2, 5), np.int32)), TypeError,
     ["relu_forward", "float32", "int32", "(2, 5)"]),
    ("int64-output", lambda: _C.exp_forward(np.ones((2, 5), np.int64), f32(2, 5)), TypeError,
     ["exp_forward", "'y'", "int64", "(2, 5)"]),
    ("transposed-view", lambda: _C.softmax_forward(f32(4, 3), transposed(4, 3)), ValueError,
     ["softmax_forward", "'x'", "(4, 3)", "C-contiguous"]),
    ("strided-slice", lambda: _C.tanh_forward(f32(3, 4), f32(3, 8)[:, ::2]), ValueError,
     ["tanh_forward", "(3, 4)", "C-contiguous"]),
    ("strided-output", lambda: _C.gelu_forward(f32(6, 4)[::2], f32(3, 4)), ValueError,
     ["gelu_forward", "'y'", "(3, 4)", "C-contiguous"]),
    ("list", lambda: _C.softmax_forward(f32(1, 2), [[1.0, 2.0]]), TypeError,
     ["softmax_forward", "numpy.ndarray", "list"]),
    ("none", lambda: _C.matmul_forward(f32(2, 2), None, None, f32(2, 2)), TypeError,
     ["matmul_forward", "'a'", "numpy.ndarray", "NoneType"]),
    ("read-only", lambda: _C.softmax_forward(read_only(3, 4), f32(3, 4)), ValueError,
     ["softmax_forward", "'y'", "(3, 4)", "read-only"]),
    ("read-only-grad", lambda: _C.relu_backward(read_only(3, 4), f32(3, 4), f32(3, 4)),
     ValueError, ["relu_backward", "'dx'", "read-only"]),
    # rank and shapes
    ("softmax-0d", lambda: _C.softmax_forward(f32(), f32()), ValueError,
     ["softmax_forward", "at least 1 dims", "()"]),
    ("matmul-1d", lambda: _C.matmul_forward(f32(3), None, f32(4), f32(4, 3)), ValueError,
     ["matmul_forward", "'a'", "at least 2 dims", "(4,)"]),
    ("matmul-inner", lambda: _C.matmul_forward(f32(3, 6), None, f32(3, 4), f32(5, 6)), ValueError,
     ["matmul_forward", "inner dims", "(3, 4)", "(5, 6)", "4 vs 5"]),
    ("matmul-inner-trans", lambda: _C.matmul_forward(f32(4, 6), None, f32(3, 4), f32(6, 5),
                                                     None, True, True), ValueError,
     ["matmul_forward", "(3, 4) (transposed)", "(6, 5) (transposed)"]),
    ("matmul-out", lambda: _C.matmul_forward(f32(3, 5), None, f32(3, 4), f32(4, 6)), ValueError,
     ["matmul_forward", "'c' has shape (3, 5)", "expected (3, 6)"]),
    ("matmul-batch", lambda: _C.matmul_forward(f32(2, 3, 6), None, f32(2, 3, 4), f32(3, 4, 6)),
     ValueError, ["matmul_forward", "batch dims", "(2, 3, 4)", "(3, 4, 6)"]),
    ("matmul-bias", lambda: _C.matmul_forward(f32(3, 6), None, f32(3, 4), f32(4, 6), f32(4)),
     ValueError, ["matmul_forward", "'bias' has shape (4,)", "expected (6,)"]),
    ("matmul-grad", lambda: _C.matmul_backward(f32(4, 3), None, None, f32(3, 6), f32(3, 4),
                                               f32(4, 6)), ValueError,
     ["matmul_backward", "'da' has shape (4, 3)", "expected (3, 4)"]),
    ("matmul-dc", lambda: _C.matmul_backward(None, f32(4, 6), None, f32(3, 5), f32(3, 4),
                                             f32(4, 6)), ValueError,
     ["matmul_backward", "'dc' has shape (3, 5)", "expected (3, 6)"]),
    ("broadcast", lambda: _C.binary_forward(f32(3, 4), f32(3, 4), f32(5), 0), ValueError,
     ["binary_forward", "(3, 4)", "(5,)", "do not broadcast"]),
    ("broadcast-out", lambda: _C.binary_forward(f32(3, 4), f32(3, 1), f32(1, 5), 2), ValueError,
     ["binary_forward", "'out' has shape (3, 4)", "expected (3, 5)"]),
    ("binary-grad", lambda: _C.binary_backward(None, f32(3, 4), f32(3, 4), f32(3, 4), f32(4), 1),
     ValueError, ["binary_backward", "'db' has shape (3, 4)", "expected (4,)"]),
    ("binary-code", lambda: _C.binary_forward(f32(2), f32(2), f32(2), 7), ValueError,
     ["binary_forward", "op code 7"]),
    ("scalar-code", lambda: _C.scalar_forward(f32(2), f32(2), -1, 1.0), ValueError,
     ["scalar_forward", "op code -1"]),
    ("scalar-out", lambda: _C.scalar_forward(f32(2, 3), f32(3, 2), 0, 1.0), ValueError,
     ["scalar_forward", "'out' has shape (2, 3)", "expected (3, 2)"]),
    ("unary-grad", lambda: _C.tanh_backward(f32(3, 4), f32(3, 5), f32(3, 4)), ValueError,
     ["tanh_backward", "'dy' has shape (3, 5)", "expected (3, 4)"]),
    ("sum-axes", lambda: _C.sum_forward(f32(3), f32(3, 4), 1, 3), ValueError,
     ["sum_forward", "axes [1, 3)", "(3, 4)"]),
    ("sum-out", lambda: _C.sum_forward(f32(4), f32(3, 4), 1, 2), ValueError,
     ["sum_forward", "'out' has shape (4,)", "(3,)", "(3, 1)"]),
    ("sum-grad", lambda: _C.sum_backward(f32(3, 4), f32(4), 1, 2), ValueError,
     ["sum_backward", "(4,)", "(3, 4)"]),
    ("softmax-empty", lambda: _C.softmax_forward(f32(3, 0), f32(3, 0)), ValueError,
     ["softmax_forward", "non-empty", "(3, 0)"]),
    ("log-softmax-grad", lambda: _C.log_softmax_backward(f32(3, 4), f32(4, 3), f32(3, 4)),
     ValueError, ["log_softmax_backward", "'dy' has shape (4, 3)", "expected (3, 4)"]),
    ("layernorm-empty", lambda: _C.layer_norm_forward(f32(3, 0), f32(3), f32(3), f32(3, 0), f32(0),
                                                     f32(0), 1e-5), ValueError,
     ["layer_norm_forward", "non-empty", "(3, 0)"]),
    ("layernorm-weight", lambda: _C.layer_norm_forward(f32(3, 4), f32(3), f32(3), f32(3, 4),
                                                      f32(5), f32(4), 1e-5), ValueError,
     ["layer_norm_forward", "'weight' has shape (5,)", "expected (4,)"]),
    ("layernorm-rstd", lambda: _C.layer_norm_forward(f32(3, 4), f32(3), f32(4), f32(3, 4), f32(4),
                                                    f32(4), 1e-5), ValueError,
     ["layer_norm_forward", "'rstd' has shape (4,)", "expected (3,)"]),
    ("layernorm-eps", lambda: _C.layer_norm_forward(f32(3, 4), f32(3), f32(3), f32(3, 4), f32(4),
                                                   f32(4), -1.0), ValueError,
     ["layer_norm_forward", "eps"]),
    ("layernorm-grad", lambda: _C.layer_norm_backward(None, f32(3), None, f32(2, 4), f32(2, 4),
                                                     f32(4), f32(2), f32(2)), ValueError,
     ["layer_norm_backward", "'dweight' has shape (3,)", "expected (4,)"]),
    # cross-entropy targets
    ("ce-negative", lambda: _C.cross_entropy_forward(f32(), f32(3, 4), np.array([0, -1, 2])),
     ValueError, ["cross_entropy_forward", "target[1] = -1", "4 classes", "ignore_index = -100"]),
    ("ce-too-large", lambda: _C.cross_entropy_forward(f32(), f32(3, 4), np.array([0, 1, 4])),
     ValueError, ["cross_entropy_forward", "target[2] = 4", "out of range", "4 classes"]),
    ("ce-too-large-int32", lambda: _C.cross_entropy_backward(
        f32(3, 4), f32(), f32(3, 4), np.array([9, 1, 0], np.int32), 2), ValueError,
     ["cross_entropy_backward", "target[0] = 9", "ignore_index = 2"]),
    ("ce-not-ignore", lambda: _C.cross_entropy_forward(f32(), f32(3, 4), np.array([0, -100, 1]),
                                                       -1), ValueError,
     ["cross_entropy_forward", "target[1] = -100", "ignore_index = -1"]),
    ("ce-target-float", lambda: _C.cross_entropy_forward(f32(), f32(3, 4), f32(3)), TypeError,
     ["cross_entropy_forward", "'target'", "int64 or int32", "float32"]),
    ("ce-target-int16", lambda: _C.cross_entropy_forward(f32(), f32(3, 4),
                                                         np.zeros(3, np.int16)), TypeError,
     ["cross_entropy_forward", "int64 or int32", "int16"]),
    ("ce-target-list", lambda: _C.cross_entropy_forward(f32(), f32(3, 4), [0, 1, 2]), TypeError,
     ["cross_entropy_forward", "'target'", "numpy.ndarray"]),
    ("ce-target-shape", lambda: _C.cross_entropy_forward(f32(), f32(3, 4), np.zeros(4, np.int64)),
     ValueError, ["cross_entropy_forward", "'target' has shape (4,)", "expected (3,)"]),
    ("ce-target-strided", lambda: _C.cross_entropy_forward(f32(), f32(3, 4),
                                                           np.zeros(6, np.int64)[::2]),
     ValueError, ["cross_entropy_forward", "'target'", "C-contiguous"]),
    ("ce-logits-3d", lambda: _C.cross_entropy_forward(f32(), f32(2, 3, 4), T3), ValueError,
     ["cross_entropy_forward", "2-D", "(2, 3, 4)"]),
    ("ce-no-classes", lambda: _C.cross_entropy_forward(f32(), f32(3, 0), T3), ValueError,
     ["cross_entropy_forward", "'classes'", "non-empty", "(3, 0)"]),
    ("ce-loss-shape", lambda: _C.cross_entropy_forward(f32(1), f32(3, 4), T3), ValueError,
     ["cross_entropy_forward", "'loss' must be 0-D ()", "(1,)"]),
    ("ce-dloss-shape", lambda: _C.cross_entropy_backward(f32(3, 4), f32(1), f32(3, 4), T3),
     ValueError, ["cross_entropy_backward", "'dloss' must be 0-D ()", "(1,)"]),
    # convolution: x (N, C, H, W), weight (K, C, R, S), stride / padding / dilation (h, w) pairs
    ("conv-x-rank", lambda: _C.conv2d_forward(f32(1, 2, 3, 3), f32(2, 5, 5), f32(2, 2, 3, 3), None,
                                              (1, 1), (0, 0), (1, 1)), ValueError,
     ["conv2d_forward", "'x' must be 4-D", "(2, 5, 5)"]),
    ("conv-weight-rank", lambda: _C.conv2d_forward(f32(1, 2, 3, 3), f32(1, 2, 5, 5), f32(2, 3, 3),
                                                   None, (1, 1), (0, 0), (1, 1)), ValueError,
     ["conv2d_forward", "'weight' must be 4-D", "(2, 3, 3)"]),
    ("conv-channels", lambda: _C.conv2d_forward(f32(1, 4, 3, 3), f32(1, 3, 5, 5), f32(4, 2, 3, 3),
                                                None, (1, 1), (0, 0), (1, 1)), ValueError,
     ["conv2d_forward", "'weight' has shape (4, 2, 3, 3)", "expected (4, 3, 3, 3)"]),
    ("conv-y-shape", lambda: _C.conv2d_forward(f32(1, 4, 3, 4), f32(1, 3, 5, 5), f32(4, 3, 3, 3),
                                               None, (1, 1), (0, 0), (1, 1)), ValueError,
     ["conv2d_forward", "'y' has shape (1, 4, 3, 4)", "expected (1, 4, 3, 3)"]),
    ("conv-y-strided-geometry", lambda: _C.conv2d_forward(
        f32(2, 4, 5, 5), f32(2, 3, 9, 8), f32(4, 3, 3, 2), None, (2, 3), (1, 2), (1, 2)),
     ValueError, ["conv2d_forward", "'y' has shape (2, 4, 5, 5)", "expected (2, 4, 5, 4)"]),
    ("conv-no-output", lambda: _C.conv2d_forward(f32(1, 1, 1, 1), f32(1, 1, 2, 2), f32(1, 1, 3, 3),
                                                 None, (1, 1), (0, 0), (1, 1)), ValueError,
     ["conv2d_forward", "(1, 1, 3, 3)", "(1, 1, 2, 2)", "no output"]),
    ("conv-no-output-dilated", lambda: _C.conv2d_forward(
        f32(1, 1, 1, 1), f32(1, 1, 5, 5), f32(1, 1, 3, 3), None, (1, 1), (0, 0), (1, 3)),
     ValueError, ["conv2d_forward", "dilation (1, 3)", "no output"]),
    ("conv-empty-channels", lambda: _C.conv2d_forward(f32(1, 2, 3, 3), f32(1, 0, 5, 5),
                                                      f32(2, 0, 3, 3), None, (1, 1), (0, 0), (1, 1)),
     ValueError, ["conv2d_forward", "empty", "(1, 0, 5, 5)", "(2, 0, 3, 3)"]),
    ("conv-bias-shape", lambda: _C.conv2d_forward(f32(1, 4, 3, 3), f32(1, 3, 5, 5), f32(4, 3, 3, 3),
                                                  f32(5), (1, 1), (0, 0), (1, 1)), ValueError,
     ["conv2d_forward", "'bias' has shape (5,)", "expected (4,)"]),
    ("conv-float64", lambda: _C.conv2d_forward(f32(1, 4, 3, 3), np.ones((1, 3, 5, 5)),
                                               f32(4, 3, 3, 3), None, (1, 1), (0, 0), (1, 1)),
     TypeError, ["conv2d_forward", "'x'", "float32", "float64", "(1, 3, 5, 5)"]),
    ("conv-weight-transposed", lambda: _C.conv2d_forward(
        f32(1, 1, 3, 3), f32(1, 1, 5, 5), f32(3, 3, 1, 1).T, None, (1, 1), (0, 0), (1, 1)),
     ValueError, ["conv2d_forward", "'weight'", "C-contiguous"]),
    ("conv-y-read-only", lambda: _C.conv2d_forward(read_only(1, 1, 3, 3), f32(1, 1, 5, 5),
                                                   f32(1, 1, 3, 3), None, (1, 1), (0, 0), (1, 1)),
     ValueError, ["conv2d_forward", "'y'", "read-only"]),
    ("conv-stride-zero", lambda: _C.conv2d_forward(f32(1, 1, 3, 3), f32(1, 1, 5, 5), f32(1, 1, 3, 3),
                                                   None, (0, 1), (0, 0), (1, 1)), ValueError,
     ["conv2d_forward", "'stride' must be >= 1", "(0, 1)"]),
    ("conv-padding-negative", lambda: _C.conv2d_forward(
        f32(1, 1, 3, 3), f32(1, 1, 5, 5), f32(1, 1, 3, 3), None, (1, 1), (0, -1), (1, 1)),
     ValueError, ["conv2d_forward", "'padding' must be >= 0", "(0, -1)"]),
    ("conv-dilation-zero", lambda: _C.conv2d_forward(
        f32(1, 1, 3, 3), f32(1, 1, 5, 5), f32(1, 1, 3, 3), None, (1, 1), (0, 0), [1, 0]),
     ValueError, ["conv2d_forward", "'dilation' must be >= 1", "[1, 0]"]),
    ("conv-stride-huge", lambda: _C.conv2d_forward(f32(1, 1, 3, 3), f32(1, 1, 5, 5), f32(1, 1, 3, 3),
                                                   None, (1, 2**70), (0, 0), (1, 1)), ValueError,
     ["conv2d_forward", "'stride'", "<= 2147483647"]),
    ("conv-stride-int", lambda: _C.conv2d_forward(f32(1, 1, 3, 3), f32(1, 1, 5, 5), f32(1, 1, 3, 3),
                                                  None, "1", (0, 0), (1, 1)), TypeError,
     ["conv2d_forward", "'stride' must be an int or a pair (h, w) of ints", "got '1'"]),
    ("conv-padding-float", lambda: _C.conv2d_forward(
        f32(1, 1, 3, 3), f32(1, 1, 5, 5), f32(1, 1, 3, 3), None, (1, 1), (0.0, 0), (1, 1)),
     TypeError, ["conv2d_forward", "'padding' must be an int or a pair", "(0.0, 0)"]),
    ("conv-dilation-triple", lambda: _C.conv2d_forward(
        f32(1, 1, 3, 3), f32(1, 1, 5, 5), f32(1, 1, 3, 3), None, (1, 1), (0, 0), (1, 1, 1)),
     TypeError, ["conv2d_forward", "'dilation' must be an int or a pair", "(1, 1, 1)"]),
    ("conv-grad-dx", lambda: _C.conv2d_backward(f32(1, 3, 5, 4), None, None, f32(1, 4, 3, 3),
                                                f32(1, 3, 5, 5), f32(4, 3, 3, 3), (1, 1), (0, 0),
                                                (1, 1)), ValueError,
     ["conv2d_backward", "'dx' has shape (1, 3, 5, 4)", "expected (1, 3, 5, 5)"]),
    ("conv-grad-dweight", lambda: _C.conv2d_backward(None, f32(4, 3, 3, 2), None, f32(1, 4, 3, 3),
                                                     f32(1, 3, 5, 5), f32(4, 3, 3, 3), (1, 1),
                                                     (0, 0), (1, 1)), ValueError,
     ["conv2d_backward", "'dweight' has shape (4, 3, 3, 2)", "expected (4, 3, 3, 3)"]),
    ("conv-grad-dbias", lambda: _C.conv2d_backward(None, None, f32(3), f32(1, 4, 3, 3),
                                                   f32(1, 3, 5, 5), f32(4, 3, 3, 3), (1, 1), (0, 0),
                                                   (1, 1)), ValueError,
     ["conv2d_backward", "'dbias' has shape (3,)", "expected (4,)"]),
    ("conv-grad-dy", lambda: _C.conv2d_backward(None, None, f32(4), f32(1, 4, 2, 2),
                                                f32(1, 3, 5, 5), f32(4, 3, 3, 3), (2, 2), (1, 1),
                                                (1, 1)), ValueError,
     ["conv2d_backward", "'dy' has shape (1, 4, 2, 2)", "expected (1, 4, 3, 3)"]),
    ("conv-grad-channels", lambda: _C.conv2d_backward(None, None, None, f32(1, 4, 3, 3),
                                                      f32(1, 3, 5, 5), f32(4, 1, 3, 3), (1, 1),
                                                      (0, 0), (1, 1)), ValueError,
     ["conv2d_backward", "'weight' has shape (4, 1, 3, 3)", "expected (4, 3, 3, 3)"]),
    # optimizer
    ("sgd-no-buffer", lambda: _C.sgd_update(f32(3), None, f32(3), 0.1, 0.9), ValueError,
     ["sgd_update", "momentum", "momentum_buffer"]),
    ("sgd-nesterov", lambda: _C.sgd_update(f32(3), f32(3), f32(3), 0.1, 0.9, 0.5, 0.0, True),
     ValueError, ["sgd_update", "nesterov"]),
    ("sgd-grad-shape", lambda: _C.sgd_update(f32(3), None, f32(4), 0.1), ValueError,
     ["sgd_update", "'grad' has shape (4,)", "expected (3,)"]),
    ("sgd-buffer-shape", lambda: _C.sgd_update(f32(3), f32(2), f32(3), 0.1, 0.9), ValueError,
     ["sgd_update", "'momentum_buffer' has shape (2,)"]),
    ("sgd-read-only", lambda: _C.sgd_update(read_only(3), None, f32(3), 0.1), ValueError,
     ["sgd_update", "'param'", "read-only"]),
    # aliasing
    ("matmul-overlap-a", lambda: (lambda a: _C.matmul_forward(a, None, a, f32(4, 4)))(f32(4, 4)),
     ValueError, ["matmul_forward", "overlaps"]),
    ("matmul-overlap-view", lambda: (lambda buf: _C.matmul_forward(
        buf[8:16].reshape(2, 4), None, f32(2, 3), buf[:12].reshape(3, 4)))(f32(20)), ValueError,
     ["matmul_forward", "overlaps"]),
    ("matmul-overlap-bias", lambda: (lambda c: _C.matmul_forward(
            c, None, f32(3, 2), f32(2, 4), c[0]))(f32(3, 4)), ValueError, ["matmul_forward", "overlaps"]),
    ("conv-overlap-x", lambda: (lambda buf: _C.conv2d_forward(
        buf[:9].reshape(1, 1, 3, 3), buf[5:30].reshape(1, 1, 5, 5), f32(1, 1, 3, 3), None, (1, 1),
        (0, 0), (1, 1)))(f32(30)), ValueError, ["conv2d_forward", "overlaps"]),
    ("conv-overlap-bias", lambda: (lambda y: _C.conv2d_forward(
        y, f32(1, 2, 5, 5), f32(2, 2, 3, 3), y[0, 0, 0, :2], (1, 1), (0, 0), (1, 1)))(
            f32(1, 2, 3, 3)), ValueError, ["conv2d_forward", "overlaps"]),
    ("conv-grad-overlap-weight", lambda: (lambda w: _C.conv2d_backward(
        None, w, None, f32(1, 2, 3, 3), f32(1, 2, 5, 5), w, (1, 1), (0, 0), (1, 1)))(
            f32(2, 2, 3, 3)), ValueError, ["conv2d_backward", "overlaps"]),
    ("conv-grad-overlap-dy", lambda: (lambda buf: _C.conv2d_backward(
        buf[:50].reshape(1, 2, 5, 5), None, None, buf[40:58].reshape(1, 2, 3, 3), f32(1, 2, 5, 5),
        f32(2, 2, 3, 3), (1, 1), (0, 0), (1, 1)))(f32(60)), ValueError,
     ["conv2d_backward", "overlaps"]),
    ("conv-grads-overlap", lambda: (lambda buf: _C.conv2d_backward(
        None, buf[:36].reshape(2, 2, 3, 3), buf[35:37], f32(1, 2, 3, 3), f32(1, 2, 5, 5),
        f32(2, 2, 3, 3), (1, 1), (0, 0), (1, 1)))(f32(40)), ValueError,
     ["conv2d_backward", "'dweight'", "overlaps", "'dbias'"]),
    ("matmul-grad-overlap", lambda: (lambda a: _C.matmul_backward(
        a, None, None, f32(3, 3), a, f32(3, 3)))(f32(3, 3)), ValueError,
     ["matmul_backward", "overlaps"]),
]


def assert_raises_naming(call, exc, fragments):
    """call() raises exc, and its message holds every fragment (a tuple: any one of them)."""
    with pytest.raises(exc) as info:
        call()
    message = str(info.value)
    for fragment in fragments:  # a tuple: any one of its alternatives
        options = fragment if isinstance(fragment, tuple) else (fragment,)
        assert any(o in message for o in options), f"{fragment!r} not in {message!r}"


@pytest.mark.parametrize("name,call,exc,fragments", params(C_CASES))
def test_binding_errors(name, call, exc, fragments):
    assert_raises_naming(call, exc, fragments)


def test_failed_call_leaves_output_untouched():
    out = f32(3, 4, value=5.0)
    with pytest.raises(ValueError):
        _C.binary_forward(out, f32(3, 4), f32(5), 0)
    with pytest.raises(ValueError):
        _C.cross_entropy_backward(out, f32(), f32(3, 4), np.array([0, 1, 7]))
    np.testing.assert_array_equal(out, 5.0)


# Through pyengine.kernels: (id, call, exception, fragments)
K_CASES = [
    ("softmax-float64", lambda: K.softmax(np.ones((3, 4))), TypeError,
     ["softmax_forward", "float64", "(3, 4)"]),
    ("softmax-list", lambda: K.softmax([[1.0, 2.0]]), TypeError, ["softmax_forward", "list"]),
    ("softmax-empty", lambda: K.softmax(f32(2, 0)), ValueError, ["softmax_forward", "(2, 0)"]),
    ("log-softmax-rank", lambda: K.log_softmax(f32()), ValueError, ["log_softmax_forward"]),
    ("relu-transposed", lambda: K.relu(transposed(3, 5)), ValueError,
     ["relu_forward", "(3, 5)", "C-contiguous"]),
    ("exp-read-only-out", lambda: K.exp(f32(3), out=read_only(3)), ValueError,
     ["exp_forward", "read-only"]),
    ("gelu-grad-shape", lambda: K.gelu_backward(f32(2, 3), f32(3, 2)), ValueError,
     ["gelu_backward", "(2, 3)", "(3, 2)"]),
    ("matmul-inner", lambda: K.matmul(f32(3, 4), f32(5, 6)), ValueError,
     ["matmul", "(3, 4)", "(5, 6)"]),
    ("matmul-rank", lambda: K.matmul(f32(4), f32(4, 2)), ValueError,
     ["matmul", "(4,)"]),
    ("matmul-int", lambda: K.matmul(np.ones((2, 2), np.int64), f32(2, 2)), TypeError,
     ["matmul_forward", "int64"]),
    ("matmul-batch", lambda: K.matmul(f32(2, 3, 4), f32(3, 4, 5)), ValueError,
     ["matmul", "(2, 3, 4)", "(3, 4, 5)"]),
    ("matmul-overlap", lambda: (lambda a: K.matmul(a, f32(4, 4), out=a))(f32(4, 4)), ValueError,
     ["matmul_forward", "overlaps"]),
    ("matmul-grad-buffer", lambda: K.matmul_backward(f32(3, 5), f32(3, 4), f32(4, 5),
                                                     grad_b=f32(5, 4)), ValueError,
     ["matmul_backward", "(5, 4)", "(4, 5)"]),
    ("add-out-shape", lambda: K.add(f32(3, 4), f32(4), out=f32(4, 3)), ValueError,
     ["binary_forward", "(4, 3)", "(3, 4)"]),
    ("mul-float64", lambda: K.mul(f32(3), np.ones(3)), TypeError, ["binary_forward", "float64"]),
    ("add-broadcast", lambda: K.add(f32(3, 4), f32(5)), ValueError,
        [("add", "binary_forward"), "(3, 4)", "(5,)"]),
    ("sub-broadcast-backward", lambda: K.sub_backward(f32(3, 4), f32(3, 4), f32(5)), ValueError,
     ["binary_backward", "(3, 4)", "(5,)"]),
    ("pow-list", lambda: K.pow_scalar([1.0, 2.0], 2.0), TypeError, ["scalar_forward", "list"]),
    ("layer-norm-weight", lambda: K.layer_norm(f32(3, 4), f32(5), f32(4)), ValueError,
     ["layer_norm_forward", "(5,)", "(4,)"]),
    ("layer-norm-empty", lambda: K.layer_norm(f32(3, 0), f32(0), f32(0)), ValueError,
     ["layer_norm_forward", "(3, 0)"]),
    ("ce-out-of-range", lambda: K.cross_entropy(f32(2, 3), np.array([0, 3])), ValueError,
     ["cross_entropy_forward", "target[1] = 3", "3 classes"]),
    ("ce-negative", lambda: K.cross_entropy_backward(f32(), f32(2, 3), np.array([-2, 0], np.int32)),
     ValueError, ["cross_entropy_backward", "target[0] = -2"]),
    ("ce-target-dtype", lambda: K.cross_entropy(f32(2, 3), np.array([0.0, 1.0])), TypeError,
     ["cross_entropy_forward", "int64 or int32", "float64"]),
    ("sgd-no-buffer", lambda: K.sgd_update(f32(3), f32(3), lr=0.1, momentum=0.9), ValueError,
     ["sgd_update", "momentum_buffer"]),
    ("conv2d-channels", lambda: K.conv2d(f32(1, 3, 5, 5), f32(4, 2, 3, 3)), ValueError,
     ["conv2d", "'weight' has shape (4, 2, 3, 3)", "expected (4, 3, 3, 3)"]),
    ("conv2d-no-output", lambda: K.conv2d(f32(1, 1, 2, 2), f32(1, 1, 3, 3), dilation=2),
     ValueError, ["conv2d", "(1, 1, 3, 3)", "no output"]),
    ("conv2d-stride-zero", lambda: K.conv2d(f32(1, 1, 5, 5), f32(1, 1, 3, 3), stride=0),
     ValueError, ["conv2d", "'stride' must be >= 1", "got 0"]),
    ("conv2d-stride-str", lambda: K.conv2d(f32(1, 1, 5, 5), f32(1, 1, 3, 3), stride="2"),
     TypeError, ["conv2d", "stride", "'2'"]),
    ("conv2d-padding-float", lambda: K.conv2d(f32(1, 1, 5, 5), f32(1, 1, 3, 3), padding=(1, 0.5)),
     TypeError, ["conv2d", "padding", "(1, 0.5)"]),
    ("conv2d-float64", lambda: K.conv2d(np.ones((1, 1, 5, 5)), f32(1, 1, 3, 3)), TypeError,
     ["conv2d_forward", "float64", "(1, 1, 5, 5)"]),
    ("conv2d-list", lambda: K.conv2d([[1.0]], f32(1, 1, 1, 1)), TypeError, ["conv2d", "list"]),
    ("conv2d-out-shape", lambda: K.conv2d(f32(1, 1, 5, 5), f32(2, 1, 3, 3), out=f32(1, 2, 5, 5)),
     ValueError, ["conv2d_forward", "(1, 2, 5, 5)", "expected (1, 2, 3, 3)"]),
    ("conv2d-grad-buffer", lambda: K.conv2d_backward(f32(1, 2, 3, 3), f32(1, 1, 5, 5),
                                                     f32(2, 1, 3, 3), grad_weight=f32(2, 1, 3, 2)),
     ValueError, ["conv2d_backward", "'dweight' has shape (2, 1, 3, 2)", "expected (2, 1, 3, 3)"]),
    ("sum-axis", lambda: K.sum(f32(2, 3), axis=2), ValueError, ["sum", "axis 2", "2 dims"]),
    ("sum-repeated-axis", lambda: K.sum(f32(2, 3), axis=(1, -1)), ValueError, ["sum", "repeated"]),
    ("sum-list", lambda: K.sum([1.0, 2.0]), TypeError, ["sum", "list"]),
    ("sum-float64", lambda: K.sum(np.ones((2, 3)), axis=(0, 1)), TypeError,
     ["sum_forward", "float64", "(2, 3)"]),
    ("mean-axis", lambda: K.mean(f32(2, 3), axis=-3), ValueError, ["mean", "axis -3"]),
    ("sum-backward-shape", lambda: K.sum_backward(f32(3, 4), (2, 3, 4), axis=(0, 2)),
        ValueError, ["sum_backward", "(3, 4)", "(2, 3, 4)"]),
    ("sum-backward-shape-adjacent", lambda: K.sum_backward(f32(5), (2, 3, 4), axis=(1, 2)),
     ValueError, ["sum_backward", "(5,)", "(2, 3, 4)"]),
]


@pytest.mark.parametrize("name,call,exc,fragments", params(K_CASES))
def test_kernels_api_errors(name, call, exc, fragments):
    assert_raises_naming(call, exc, fragments)


# ---------------------------------------------------------------- no crash, whatever the input


def _valid_calls():
    """One valid positional argument tuple per declared kernel (tests/op_cases.py)."""
    return {name: tuple(args) for name, args in op_cases.valid_calls().items()}


def _bad_values():
    return [None, 1.5, -1, 10**20, "x", [[1.0]], np.ones((3, 4)), np.ones((3, 4), np.int32),
            np.ones((3, 4), np.int64), np.ones((4, 3), np.float32).T, np.ones((), np.float32),
            np.ones((0,), np.float32), np.ones((3, 0), np.float32), np.ones((0, 4), np.float32),
            np.ones((2, 3, 4), np.float32), np.ones(3, np.float32), np.ones((1, 4), np.float32),
            np.array([5, -7, 1], np.int64), np.array([0, 1, 2], np.int32), read_only(3, 4)]


def fuzz() -> list[str]:
    """Every kernel with each argument replaced by each bad value, at every ISA level: only
    TypeError / ValueError naming the kernel may come out (or a successful call)."""
    problems = []
    for isa in pyengine.available_isas():
        with pyengine.use_isa(isa):
            for name, args in _valid_calls().items():
                getattr(_C, name)(*args)  # the valid call itself works
                for i in range(len(args)):
                    for bad in _bad_values():
                        call_args = list(_valid_calls()[name])
                        call_args[i] = bad
                        try:
                            getattr(_C, name)(*call_args)
                        except (TypeError, ValueError) as error:
                            if name not in str(error):
                                problems.append(f"{name} arg {i}={bad!r}: {error}")
                        except Exception as error:  # noqa: BLE001 - anything else is a bug
                            problems.append(f"{name} arg {i}={bad!r}: {type(error).__name__}")
    return problems


def test_fuzzed_arguments_never_crash():
    # In a child process, so a crash (segfault, abort) fails this test instead of the run.
    env = dict(os.environ, PYTHONFAULTHANDLER="1")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__)], capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 0, f"child exited with {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert proc.stdout.strip().endswith("fuzz: ok"), proc.stdout[-3000:]


# ---------------------------------------------------------------- derived from the declarations
#
# Every declared kernel, every array argument, broken one way at a time from a
# valid call: the message names the kernel, the argument and what is wrong.
# A kernel added to the registry is covered here with no test code beyond its
# example in tests/op_cases.py.


def test_every_declared_kernel_has_an_example():
    missing = sorted(set(registry.ops) - set(op_cases.valid_calls()))
    assert not missing, f"declared kernels without an example in tests/op_cases.py: {missing}"


def _array_cases():
    cases = []
    for name, args in _valid_calls().items():
        for i, arg in enumerate(registry.op(name).args):
            if args[i] is not None:
                cases.append(pytest.param(name, i, id=f"{name}-{arg['name']}"))
    return cases


def _call_with(name, i, value):
    args = list(_valid_calls()[name])
    args[i] = value
    return lambda: getattr(_C, name)(*args)


@pytest.mark.parametrize("name,i", _array_cases())
def test_declared_argument_errors(name, i):
    arg = registry.op(name).args[i]
    quoted = f"'{arg['name']}'"
    good = _valid_calls()[name][i]
    wrong_dtype = good.astype(np.float64 if arg["dtype"] == "float32" else np.float32)
    assert_raises_naming(_call_with(name, i, wrong_dtype), TypeError,
                         [name, quoted, str(wrong_dtype.dtype)])
    assert_raises_naming(_call_with(name, i, good.tolist()), TypeError,
                         [name, quoted, "numpy.ndarray"])
    # One dim more: reported against this argument or the one it no longer
    # fits, with the wrong shape in the message either way.
    longer = good[..., None].repeat(2, -1)
    assert_raises_naming(_call_with(name, i, longer), ValueError, [name, str(longer.shape)])
    if good.ndim:
        strided = np.repeat(good, 2, axis=-1)[..., ::2]
        assert_raises_naming(_call_with(name, i, strided), ValueError,
                             [name, quoted, "C-contiguous"])
    if arg["role"] in registry.WRITTEN:
        frozen = good.copy()
        frozen.setflags(write=False)
        assert_raises_naming(_call_with(name, i, frozen), ValueError, [name, quoted, "read-only"])
    if not arg["role"].startswith("optional") and arg["role"] != "output":
        assert_raises_naming(_call_with(name, i, None), TypeError, [name, quoted, "NoneType"])


def _attr_cases():
    cases = []
    for name in _valid_calls():
        info = registry.op(name)
        for j, attr in enumerate(info.attrs):
            cases.append(pytest.param(name, len(info.args) + j, attr, id=f"{name}-{attr['name']}"))
    return cases


WRONG_OPTIONS = {  # kind: [(value, exception)]
    "bool": [(1, TypeError), ("yes", TypeError), (None, TypeError)],
    "int": [(1.5, TypeError), ("1", TypeError), (True, TypeError), (None, TypeError),
            (2**70, ValueError)],
    "float": [("x", TypeError), (None, TypeError), (True, TypeError), (np.ones(3), TypeError)],
    "code": [(1.5, TypeError), (None, TypeError), (-1, ValueError), (99, ValueError),
             ("nope", ValueError)],
    "int_pair": [(1.5, TypeError), ("2", TypeError), ((1, 2, 3), TypeError),
                 ((1.0, 1), TypeError), (None, TypeError), (-5, ValueError)],
}


@pytest.mark.parametrize("name,i,attr", _attr_cases())
def test_declared_option_errors(name, i, attr):
    for value, exc in WRONG_OPTIONS[attr["kind"]]:
        assert_raises_naming(_call_with(name, i, value), exc, [name, attr["name"]])


def test_output_overlapping_an_input_is_refused():
    """A written argument that partly overlaps an input is refused for every
    kernel (exact aliasing only where declared)."""
    for name, args in _valid_calls().items():
        info = registry.op(name)
        written = [i for i, a in enumerate(info.args) if a["role"] in registry.WRITTEN
                   and args[i] is not None and args[i].size]
        read = [i for i, a in enumerate(info.args) if a["role"] not in registry.WRITTEN
                and args[i] is not None and args[i].dtype == np.float32 and args[i].size]
        assert written, name
        if not read:  # fill reads no array: nothing to overlap
            assert name == "fill", name
            continue
        w, r = written[0], read[0]
        call = list(args)
        shared = np.zeros(args[w].size + args[r].size - 1, np.float32)
        call[w] = shared[: args[w].size].reshape(args[w].shape)
        call[r] = shared[args[w].size - 1:].reshape(args[r].shape)
        assert_raises_naming(lambda name=name, call=call: getattr(_C, name)(*call), ValueError,
                             [name, "overlaps"])



if __name__ == "__main__":
    found = fuzz()
    print("\n".join(found) if found else "fuzz: ok")
    sys.exit(1 if found else 0)
