"""Pooling at every ISA level (the reference loops included): max_pool2d (the argmax, ties and NaN as
PyTorch's CPU kernel), avg_pool2d (ceil_mode, count_include_pad, divisor_override) and
adaptive_avg_pool2d (global included), forward and gradient against float64 numpy loops, PyTorch
and central finite differences; the surface (functional, nn, unbatched input, errors)."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
from helpers import F32, assert_close, check_finite_differences, helper_test_op, randn, torch

import pyengine
from pyengine import functional as F
from pyengine import kernels as K
from pyengine import nn

pytestmark = pytest.mark.usefixtures("isa")


def rng_for(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def pair(v) -> tuple:
    return (v, v) if isinstance(v, int) else tuple(v)


def out_size(n, k, s, p, d, ceil_mode) -> int:
    """PyTorch's pooling_output_shape."""
    room = n + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)
    out = room // s + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    return out


def np_max_pool(x, kernel, stride, padding, dilation, ceil_mode):
    """float64 loops: the first largest tap inside the image wins, as PyTorch's CPU kernel."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = map(pair, (kernel, stride, padding, dilation))
    n, c, h, w = x.shape
    oh, ow = out_size(h, kh, sh, ph, dh, ceil_mode), out_size(w, kw, sw, pw, dw, ceil_mode)
    y, idx = np.zeros((n, c, oh, ow)), np.zeros((n, c, oh, ow), np.int64)
    for i in range(oh):
        rows = [i * sh - ph + r * dh for r in range(kh) if 0 <= i * sh - ph + r * dh < h]
        for j in range(ow):
            cols = [j * sw - pw + s * dw for s in range(kw) if 0 <= j * sw - pw + s * dw < w]
            taps = [(a, b) for a in rows for b in cols]
            values = np.stack([x[:, :, a, b] for a, b in taps], axis=-1)
            best = np.argmax(values, axis=-1)  # the first maximum
            y[:, :, i, j] = np.take_along_axis(values, best[..., None], -1)[..., 0]
            idx[:, :, i, j] = np.array([a * w + b for a, b in taps])[best]
    return y, idx


def np_avg_pool(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override=None):
    (kh, kw), (sh, sw), (ph, pw) = map(pair, (kernel, stride, padding))
    n, c, h, w = x.shape
    oh, ow = out_size(h, kh, sh, ph, 1, ceil_mode), out_size(w, kw, sw, pw, 1, ceil_mode)
    y = np.zeros((n, c, oh, ow))
    weights = np.zeros((oh, ow, h, w))  # d y[i, j] / d x[a, b]
    for i in range(oh):
        h0, h1 = i * sh - ph, min(i * sh - ph + kh, h + ph)
        for j in range(ow):
            w0, w1 = j * sw - pw, min(j * sw - pw + kw, w + pw)
            a0, a1, b0, b1 = max(h0, 0), min(h1, h), max(w0, 0), min(w1, w)
            if a0 >= a1 or b0 >= b1:
                continue
            divisor = divisor_override or ((h1 - h0) * (w1 - w0) if count_include_pad else (a1 - a0) * (b1 - b0))
            weights[i, j, a0:a1, b0:b1] = 1.0 / divisor
    y = np.einsum("ncab,ijab->ncij", x, weights)
    return y, weights


def np_adaptive(x, size):
    oh, ow = pair(size)
    h, w = x.shape[2:]
    weights = np.zeros((oh, ow, h, w))
    for i in range(oh):
        a0, a1 = i * h // oh, math.ceil((i + 1) * h / oh)
        for j in range(ow):
            b0, b1 = j * w // ow, math.ceil((j + 1) * w / ow)
            weights[i, j, a0:a1, b0:b1] = 1.0 / ((a1 - a0) * (b1 - b0))
    return np.einsum("ncab,ijab->ncij", x, weights), weights


# (x shape, kernel, stride, padding, dilation, ceil_mode): odd sizes, padding up to half the
# (dilated) kernel, stride > 1, dilation > 1, ceil_mode with a last window cut at the edge.
MAX_CASES = {
    "2x2": ((2, 3, 8, 8), 2, 2, 0, 1, False),
    "3x3-s2-p1-odd": ((2, 3, 9, 7), 3, 2, 1, 1, False),
    "3x3-s2-ceil": ((1, 2, 8, 9), 3, 2, 0, 1, True),
    "3x3-s2-p1-ceil": ((2, 2, 10, 7), 3, 2, 1, 1, True),
    "rect-dilated": ((2, 3, 11, 10), (3, 2), (2, 3), (1, 1), (2, 1), True),
    "stride1-p1": ((1, 4, 5, 6), 3, 1, 1, 1, False),
    "kernel-is-image": ((3, 2, 5, 4), (5, 4), 1, 0, 1, False),
    "s3-k2-ceil": ((2, 1, 7, 7), 2, 3, 1, 1, True),
    # Wider than a vector of output columns at every ISA level (4, 8, 16 floats): full blocks and a
    # cut last one, kernels wider than the stride.
    "wide-3x3-s2-p1": ((2, 2, 6, 45), 3, 2, 1, 1, False),
    "wide-5x5-s3-p2-ceil": ((1, 2, 9, 52), 5, 3, 2, 1, True),
    "wide-stride1-p1": ((1, 2, 4, 37), 3, 1, 1, 1, False),
}


def max_case(shape, kernel, stride, padding, dilation, ceil_mode, x=None):
    options = dict(kernel_size=pair(kernel), stride=pair(stride), padding=pair(padding),
                   dilation=pair(dilation), ceil_mode=ceil_mode)
    inputs = [x if x is not None else randn(rng_for("max", shape, kernel), *shape)]

    def pe_bwd(g, xs, outs, grads):
        dx = np.zeros(xs[0].shape, F32) if grads is None else grads[0]
        return (K.max_pool2d_backward(g, outs[1], grad_x=dx, **options),)

    def np_bwd(g, x):
        _, idx = np_max_pool(x, kernel, stride, padding, dilation, ceil_mode)
        dx = np.zeros(x.shape).reshape(x.shape[0], x.shape[1], -1)
        n, c = x.shape[:2]
        for i in range(n):
            for j in range(c):
                np.add.at(dx[i, j], idx[i, j].ravel(), g[i, j].ravel())
        return (dx.reshape(x.shape),)

    return dict(inputs=inputs, pe_fwd=lambda x: K.max_pool2d(x, **options),
                np_fwd=lambda x: (lambda y, i: (y, i.astype(np.float64)))(
                    *np_max_pool(x, kernel, stride, padding, dilation, ceil_mode)),
                torch_fwd=lambda x: torch.nn.functional.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode),
                pe_bwd=pe_bwd, np_bwd=np_bwd)


@pytest.mark.parametrize("name", list(MAX_CASES))
def test_max_pool2d(name):
    out, _ = helper_test_op(**max_case(*MAX_CASES[name]), atol=0, rtol=0, grad_atol=1e-6, grad_rtol=1e-6)
    shape, kernel, stride, padding, dilation, ceil_mode = MAX_CASES[name]
    if torch is not None:
        _, indices = torch.nn.functional.max_pool2d(torch.tensor(max_case(*MAX_CASES[name])["inputs"][0]), kernel,
                                                    stride, padding, dilation, ceil_mode, return_indices=True)
        np.testing.assert_array_equal(out[1], indices.numpy())


def test_max_pool2d_ties_and_nan_as_pytorch():
    """Ties go to the first largest tap in row-major order; a NaN wins; all -inf keeps the first tap."""
    for width, ceil_mode in ((5, False), (5, True), (41, False), (41, True)):
        x = np.zeros((1, 3, 4, width), F32)
        x[0, 0] = np.round(randn(rng_for("ties", width), 4, width))  # many equal values
        x[0, 1, 1, 1] = np.nan
        x[0, 1, 2, 3] = np.nan
        x[0, 1, 3, width - 2:] = np.nan  # NaN in the last, cut block of columns
        x[0, 2] = -np.inf
        y, idx = K.max_pool2d(x, kernel_size=(3, 3), stride=(1, 2), padding=(1, 1), ceil_mode=ceil_mode)
        ref_y, ref_idx = torch.nn.functional.max_pool2d(torch.tensor(x), 3, (1, 2), 1, ceil_mode=ceil_mode,
                                                        return_indices=True)
        np.testing.assert_array_equal(y, ref_y.numpy())
        np.testing.assert_array_equal(idx, ref_idx.numpy())
        g = randn(rng_for("ties-g"), *y.shape)
        tx = torch.tensor(x, requires_grad=True)
        torch.nn.functional.max_pool2d(tx, 3, (1, 2), 1, ceil_mode=ceil_mode).backward(torch.tensor(g))
        dx = K.max_pool2d_backward(g, idx, grad_x=np.zeros_like(x), kernel_size=(3, 3), stride=(1, 2),
                                   padding=(1, 1), ceil_mode=ceil_mode)
        np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-6, atol=1e-6)


AVG_CASES = {
    "2x2": ((2, 3, 8, 8), 2, 2, 0, False, True, None),
    "3x3-s2-p1-include": ((2, 3, 9, 7), 3, 2, 1, False, True, None),
    "3x3-s2-p1-exclude": ((2, 3, 9, 7), 3, 2, 1, False, False, None),
    "3x3-s2-p1-ceil-include": ((1, 2, 10, 7), 3, 2, 1, True, True, None),
    "3x3-s2-p1-ceil-exclude": ((1, 2, 10, 7), 3, 2, 1, True, False, None),
    "rect-ceil": ((2, 2, 11, 6), (3, 2), (2, 3), (1, 1), True, True, None),
    "divisor": ((2, 2, 7, 7), 3, 2, 1, True, True, 5),
    "stride1": ((1, 3, 5, 6), (2, 3), 1, (1, 1), False, False, None),
}


def avg_case(shape, kernel, stride, padding, ceil_mode, include, divisor):
    options = dict(kernel_size=pair(kernel), stride=pair(stride), padding=pair(padding), ceil_mode=ceil_mode,
                   count_include_pad=include, divisor_override=divisor or 0)

    def pe_bwd(g, xs, outs, grads):
        dx = np.zeros(xs[0].shape, F32) if grads is None else grads[0]
        return (K.avg_pool2d_backward(g, grad_x=dx, **options),)

    def np_bwd(g, x):
        _, weights = np_avg_pool(x, kernel, stride, padding, ceil_mode, include, divisor)
        return (np.einsum("ncij,ijab->ncab", g, weights),)

    return dict(inputs=[randn(rng_for("avg", shape, kernel), *shape)], pe_fwd=lambda x: K.avg_pool2d(x, **options),
                np_fwd=lambda x: np_avg_pool(x, kernel, stride, padding, ceil_mode, include, divisor)[0],
                torch_fwd=lambda x: torch.nn.functional.avg_pool2d(x, kernel, stride, padding, ceil_mode, include,
                                                                   divisor),
                pe_bwd=pe_bwd, np_bwd=np_bwd)


@pytest.mark.parametrize("name", list(AVG_CASES))
def test_avg_pool2d(name):
    helper_test_op(**avg_case(*AVG_CASES[name]), atol=1e-6, rtol=1e-5)


ADAPTIVE_CASES = {"global": ((2, 3, 7, 5), 1), "3x4-of-7x9": ((2, 3, 7, 9), (3, 4)),
                  "larger-than-input": ((1, 2, 3, 2), (5, 3)), "identity": ((1, 2, 4, 4), 4)}


def adaptive_case(shape, size):
    def pe_bwd(g, xs, outs, grads):
        dx = np.zeros(xs[0].shape, F32) if grads is None else grads[0]
        return (K.adaptive_avg_pool2d_backward(g, grad_x=dx, output_size=pair(size)),)

    return dict(inputs=[randn(rng_for("adaptive", shape), *shape)],
                pe_fwd=lambda x: K.adaptive_avg_pool2d(x, output_size=pair(size)),
                np_fwd=lambda x: np_adaptive(x, size)[0],
                torch_fwd=lambda x: torch.nn.functional.adaptive_avg_pool2d(x, size),
                pe_bwd=pe_bwd, np_bwd=lambda g, x: (np.einsum("ncij,ijab->ncab", g, np_adaptive(x, size)[1]),))


@pytest.mark.parametrize("name", list(ADAPTIVE_CASES))
def test_adaptive_avg_pool2d(name):
    helper_test_op(**adaptive_case(*ADAPTIVE_CASES[name]), atol=1e-6, rtol=1e-5)


def test_pooling_finite_differences():
    # Max pooling of distinct values (gaps >> eps) is differentiable where measured.
    x = (np.random.default_rng(3).permutation(2 * 2 * 7 * 6).reshape(2, 2, 7, 6) * 0.1).astype(F32)
    case = max_case((2, 2, 7, 6), 3, 2, 1, 1, True, x=x)
    check_finite_differences(case["inputs"], case["pe_fwd"], case["pe_bwd"], eps=1e-2)
    for case in (avg_case(*AVG_CASES["3x3-s2-p1-ceil-exclude"]), adaptive_case(*ADAPTIVE_CASES["3x4-of-7x9"])):
        check_finite_differences(case["inputs"], case["pe_fwd"], case["pe_bwd"], eps=1e-2)


def test_pool_thread_count_independent(restore_threads):
    x = randn(rng_for("threads"), 4, 16, 33, 31)
    runs = []
    for threads in (1, 2):
        pyengine.set_num_threads(threads)
        y, idx = K.max_pool2d(x, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))
        a = K.avg_pool2d(x, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), count_include_pad=False)
        g = K.adaptive_avg_pool2d(x, output_size=(1, 1))
        runs.append((y, idx, a, g, K.avg_pool2d_backward(a, grad_x=np.zeros_like(x), kernel_size=(3, 3),
                                                         stride=(2, 2), padding=(1, 1), count_include_pad=False)))
    for one, two in zip(*runs):
        np.testing.assert_array_equal(one, two)


# ---------------------------------------------------------------- the surface


@pytest.mark.skipif(torch is None, reason="needs torch")
def test_functional_and_modules_match_torch():
    x = randn(rng_for("surface"), 2, 3, 9, 8)
    modules = [(nn.MaxPool2d(3, 2, 1, ceil_mode=True), torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True)),
               (nn.AvgPool2d(3, 2, 1, count_include_pad=False), torch.nn.AvgPool2d(3, 2, 1, count_include_pad=False)),
               (nn.AdaptiveAvgPool2d((2, 3)), torch.nn.AdaptiveAvgPool2d((2, 3))),
               (nn.AdaptiveAvgPool2d(1), torch.nn.AdaptiveAvgPool2d(1)), (nn.Flatten(), torch.nn.Flatten())]
    for ours, theirs in modules:
        assert repr(ours) == repr(theirs)
        t = pyengine.Tensor(x.copy(), requires_grad=True)
        tx = torch.tensor(x, requires_grad=True)
        y, ty = ours(t), theirs(tx)
        assert_close(y.numpy(), ty.detach().numpy(), atol=1e-6, rtol=1e-6, what=repr(ours))
        (y * y).sum().backward()
        (ty * ty).sum().backward()
        assert_close(t.grad.numpy(), tx.grad.numpy(), atol=1e-5, rtol=1e-5, what=repr(ours))
    # Unbatched (C, H, W) images and return_indices.
    y, idx = F.max_pool2d(pyengine.Tensor(x[0]), 2, return_indices=True)
    ty, tidx = torch.nn.functional.max_pool2d(torch.tensor(x[0]), 2, return_indices=True)
    np.testing.assert_array_equal(y.numpy(), ty.numpy())
    np.testing.assert_array_equal(idx.numpy(), tidx.numpy())
    assert F.avg_pool2d(pyengine.Tensor(x[0]), 3).shape == (3, 3, 2)


def test_pool_errors():
    x = pyengine.Tensor(np.ones((1, 2, 5, 5), F32))
    with pytest.raises(ValueError, match="at most half of kernel_size"):
        F.max_pool2d(x, 3, padding=2)
    with pytest.raises(ValueError, match="at most half of kernel_size"):
        F.avg_pool2d(x, 2, padding=2)
    with pytest.raises(ValueError, match="too small"):
        F.max_pool2d(x, 7)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\) or \(C, H, W\)"):
        F.avg_pool2d(pyengine.Tensor(np.ones((5, 5), F32)), 2)
    with pytest.raises(TypeError, match="kernel_size"):
        F.max_pool2d(x, 2.5)
    with pytest.raises(ValueError, match="divisor_override"):
        F.avg_pool2d(x, 2, divisor_override=0)
    with pytest.raises(ValueError, match="output_size"):
        F.adaptive_avg_pool2d(x, 0)
