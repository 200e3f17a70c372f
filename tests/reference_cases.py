"""The float64 reference cases of the core kernels, keyed by op: each ``*_case`` factory returns the
keyword arguments of ``helpers.helper_test_op`` for one op and problem (pyengine's forward and
backward, the float64 numpy reference, PyTorch's forward), ``*_tol`` the tolerances a problem's size
calls for, and ``FD_CASES`` the small problems the finite-difference test runs through the same
factories. The kernel tests (tests/test_kernels.py, tests/test_conv.py) and op_cases.py's coverage
check read them from here; the example calls and bad inputs of every declared op are op_cases.py's.
"""

from __future__ import annotations

import operator
import zlib
from dataclasses import dataclass

import numpy as np
from helpers import F32, away_from_zero, randn, torch, unbroadcast
from op_cases import POSITIVE_DOMAIN, UNARY

from pyengine import kernels as K
from pyengine import registry

if torch is not None:
    import torch.nn.functional as TF


def rng_for(*key) -> np.random.Generator:
    """A generator seeded from the test parameters (stable across runs and processes)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _grads(grads, count):
    return (None,) * count if grads is None else tuple(grads) + (None,) * (count - len(grads))


def _t(x, flag):  # numpy and torch alike
    return x.swapaxes(-1, -2) if flag else x


def matmul_case(rng, m, n, k, trans_a, trans_b, with_bias, batch_a=(), batch_b=()):
    a = randn(rng, *batch_a, *((k, m) if trans_a else (m, k)))
    b = randn(rng, *batch_b, *((n, k) if trans_b else (k, n)))
    inputs = [a, b] + ([randn(rng, n)] if with_bias else [])

    def pe_fwd(a, b, bias=None):
        return K.matmul(a, b, bias, trans_a=trans_a, trans_b=trans_b)

    def ref_fwd(a, b, bias=None):  # numpy arrays or torch tensors
        c = _t(a, trans_a) @ _t(b, trans_b)
        return c if bias is None else c + bias

    def pe_bwd(g, xs, outs, grads):
        ga, gb, gbias = _grads(grads, 3)
        res = K.matmul_backward(g, xs[0], xs[1], trans_a=trans_a, trans_b=trans_b,
                                needs_bias=with_bias, grad_a=ga, grad_b=gb, grad_bias=gbias)
        return res[:len(xs)]

    def np_bwd(g, a, b, bias=None):
        op_a, op_b = _t(a, trans_a), _t(b, trans_b)
        ga = unbroadcast(_t(g @ op_b.swapaxes(-1, -2), trans_a), a.shape)
        gb = unbroadcast(_t(op_a.swapaxes(-1, -2) @ g, trans_b), b.shape)
        return (ga, gb) + (() if bias is None else (g.reshape(-1, n).sum(0),))

    return dict(inputs=inputs, pe_fwd=pe_fwd, np_fwd=ref_fwd, torch_fwd=ref_fwd, pe_bwd=pe_bwd,
                np_bwd=np_bwd)


def matmul_tol(m, n, k, batch=1):
    # float32 dot products of length L err by ~sqrt(L) ulps typically, L ulps at worst; the
    # gradients sum over n (grad_a), batch * m (grad_b, shared) and batch * m (grad_bias).
    length = max(k, n, m * batch)
    return dict(atol=3e-6 * length + 1e-5, rtol=1e-4)


# Odd sizes in 1..300: partial micro-tiles everywhere, several row tasks and k blocks; the last
# one crosses the packed-B column block (1024) and the baseline k block (384).
TRANS = [(False, False), (True, False), (False, True), (True, True)]


BINARY = {  # name: (forward, d/da, d/db), on numpy arrays (forward also on torch tensors)
    "add": (operator.add, lambda a, b: np.ones_like(a * b), lambda a, b: np.ones_like(a * b)),
    "sub": (operator.sub, lambda a, b: np.ones_like(a * b), lambda a, b: -np.ones_like(a * b)),
    "mul": (operator.mul, lambda a, b: b + 0 * a, lambda a, b: a + 0 * b),
    "div": (operator.truediv, lambda a, b: 1 / b + 0 * a, lambda a, b: -a / b**2),
}


def binary_case(rng, op, shape_a, shape_b):
    fwd, da, db = BINARY[op]
    a = randn(rng, *shape_a)
    b = away_from_zero(rng, *shape_b) if op == "div" else randn(rng, *shape_b)
    pe_fwd, pe_back = getattr(K, op), getattr(K, op + "_backward")

    def pe_bwd(g, xs, outs, grads):
        ga, gb = _grads(grads, 2)
        return pe_back(g, xs[0], xs[1], grad_a=ga, grad_b=gb)

    def np_bwd(g, a, b):
        return unbroadcast(g * da(a, b), a.shape), unbroadcast(g * db(a, b), b.shape)

    return dict(inputs=[a, b], pe_fwd=pe_fwd, np_fwd=fwd, torch_fwd=fwd, pe_bwd=pe_bwd,
                np_bwd=np_bwd)


SCALAR = {  # name: (forward, d/da) on arrays or tensors
    "add": (lambda a, s: a + s, lambda a, s: 1 + 0 * a),
    "sub": (lambda a, s: a - s, lambda a, s: 1 + 0 * a),
    "rsub": (lambda a, s: s - a, lambda a, s: -1 + 0 * a),
    "mul": (lambda a, s: a * s, lambda a, s: s + 0 * a),
    "div": (lambda a, s: a / s, lambda a, s: 1 / s + 0 * a),
    "rdiv": (lambda a, s: s / a, lambda a, s: -s / a**2),
    "pow": (lambda a, s: a**s, lambda a, s: s * a ** (s - 1) if s else 0 * a),
}


SCALAR_CASES = [("add", 1.5), ("sub", 0.75), ("rsub", 2.0), ("mul", -1.25), ("div", 0.8),
                ("rdiv", 1.5), ("pow", 2.0), ("pow", 3.0), ("pow", 1.0), ("pow", 0.0),
                ("pow", 0.5), ("pow", -1.5)]


def scalar_case(rng, op, s, shape):
    fwd, grad = SCALAR[op]
    a = away_from_zero(rng, *shape)
    if op == "pow" and s != int(s):
        a = np.abs(a)  # fractional powers of positive numbers only
    pe_fwd = getattr(K, op + "_scalar")

    def pe_bwd(g, xs, outs, grads):
        return (K.scalar_backward(g, xs[0], op=op, s=s, grad_a=_grads(grads, 1)[0]),)

    return dict(inputs=[a], pe_fwd=lambda a: pe_fwd(a, s), np_fwd=lambda a: fwd(a, s),
                torch_fwd=lambda a: fwd(a, s), pe_bwd=pe_bwd,
                np_bwd=lambda g, a: (g * grad(a, s),))


def unary_case(rng, op, shape, scale=3.0):
    np_fwd, np_grad, torch_fwd = UNARY[op]
    takes_y = "y" in registry.op(op + "_backward").inputs  # what its declaration reads
    x = away_from_zero(rng, *shape, margin=0.1) * F32(scale)
    if op in POSITIVE_DOMAIN:
        x = np.abs(x) + F32(0.5)
    fwd, back = getattr(K, op), getattr(K, op + "_backward")

    def pe_bwd(g, xs, outs, grads):
        return (back(g, outs[0] if takes_y else xs[0], grad_x=_grads(grads, 1)[0]),)

    return dict(inputs=[x], pe_fwd=fwd, np_fwd=np_fwd, torch_fwd=torch_fwd, pe_bwd=pe_bwd,
                np_bwd=lambda g, x: (g * np_grad(x),))


def add_relu_case(rng, shape):
    """relu(a + b) of one shape, a + b kept 0.1 away from the kink (finite differences)."""
    a = randn(rng, *shape)
    b = away_from_zero(rng, *shape, margin=0.1) - a

    def pe_bwd(g, xs, outs, grads):
        ga, gb = _grads(grads, 2)
        return K.add_relu_backward(g, outs[0], grad_a=ga, grad_b=gb)

    return dict(inputs=[a, b], pe_fwd=K.add_relu, np_fwd=lambda a, b: np.maximum(a + b, 0),
                torch_fwd=lambda a, b: torch.relu(a + b), pe_bwd=pe_bwd,
                np_bwd=lambda g, a, b: (g * (a + b > 0), g * (a + b > 0)))


def clamp_case(rng, shape, lo, hi):
    # Inputs kept 0.05 away from the bounds: the derivative jumps there.
    x = randn(rng, *shape)
    for bound in (lo, hi):
        near = np.abs(x - bound) < 0.05
        x[near] += F32(0.1)

    def pe_bwd(g, xs, outs, grads):
        return (K.clamp_backward(g, xs[0], min=lo, max=hi, grad_x=_grads(grads, 1)[0]),)

    return dict(inputs=[x], pe_fwd=lambda x: K.clamp(x, min=lo, max=hi),
                np_fwd=lambda x: np.clip(x, lo, hi), torch_fwd=lambda x: torch.clamp(x, lo, hi),
                pe_bwd=pe_bwd, np_bwd=lambda g, x: (g * ((x >= lo) & (x <= hi)),))


def reduce_case(rng, op, shape, axis, keepdims):
    x = randn(rng, *shape)
    fwd, back = getattr(K, op), getattr(K, op + "_backward")
    np_fwd = getattr(np, op)
    axes = tuple(range(len(shape))) if axis is None else (
        (axis,) if isinstance(axis, int) else axis)
    count = int(np.prod([shape[a] for a in axes]))

    def pe_bwd(g, xs, outs, grads):
        return (back(g, xs[0].shape, axis, keepdims, grad_x=_grads(grads, 1)[0]),)

    def np_bwd(g, x):
        g = g if keepdims else np.expand_dims(g, tuple(a % x.ndim for a in axes))
        return (np.broadcast_to(g / (count if op == "mean" else 1), x.shape),)

    def torch_fwd(x):
        return getattr(torch, op)(x, dim=axis, keepdim=keepdims)

    return dict(inputs=[x], pe_fwd=lambda x: fwd(x, axis, keepdims),
                np_fwd=lambda x: np_fwd(x, axis=axis, keepdims=keepdims), torch_fwd=torch_fwd,
                pe_bwd=pe_bwd, np_bwd=np_bwd)


def _np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_log_softmax(x):
    z = x - x.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def softmax_case(op, x):
    fwd, back = getattr(K, op), getattr(K, op + "_backward")

    def pe_bwd(g, xs, outs, grads):
        return (back(g, outs[0], grad_x=_grads(grads, 1)[0]),)

    def np_bwd(g, x):
        if op == "softmax":
            y = _np_softmax(x)
            return (y * (g - (g * y).sum(-1, keepdims=True)),)
        return (g - np.exp(_np_log_softmax(x)) * g.sum(-1, keepdims=True),)

    return dict(inputs=[x], pe_fwd=fwd, np_fwd=_np_softmax if op == "softmax" else _np_log_softmax,
                torch_fwd=lambda x: getattr(torch, op)(x, dim=-1), pe_bwd=pe_bwd, np_bwd=np_bwd)


def layer_norm_case(rng, shape, eps=1e-5):
    cols = shape[-1]
    x, w, b = randn(rng, *shape, scale=2.0, shift=3.0), randn(rng, cols), randn(rng, cols)

    def ref_fwd(x, w, b):  # numpy arrays or torch tensors
        mean = x.mean(-1)
        var = ((x - mean[..., None]) ** 2).mean(-1)
        rstd = 1 / (var + eps) ** 0.5
        return (x - mean[..., None]) * rstd[..., None] * w + b, mean, rstd

    def torch_fwd(x, w, b):
        return (TF.layer_norm(x, (cols,), w, b, eps),) + ref_fwd(x, w, b)[1:]

    def pe_bwd(g, xs, outs, grads):
        gx, gw, gb = _grads(grads, 3)
        return K.layer_norm_backward(g, xs[0], xs[1], outs[1], outs[2], grad_x=gx, grad_weight=gw,
                                     grad_bias=gb)

    def np_bwd(g, x, w, b):
        _, mean, rstd = ref_fwd(x, w, b)
        xhat = (x - mean[..., None]) * rstd[..., None]
        gw = g * w
        dx = rstd[..., None] * (gw - gw.mean(-1, keepdims=True)
                                - xhat * (gw * xhat).mean(-1, keepdims=True))
        return dx, (g * xhat).reshape(-1, cols).sum(0), g.reshape(-1, cols).sum(0)

    return dict(inputs=[x, w, b], pe_fwd=lambda x, w, b: K.layer_norm(x, w, b, eps=eps),
                np_fwd=ref_fwd, torch_fwd=torch_fwd, pe_bwd=pe_bwd, np_bwd=np_bwd)


def add_layer_norm_case(rng, shape, eps=1e-5):
    """layer_norm(a + b): layer_norm_case's references at x = a + b, the gradient of x to both."""
    a, b = randn(rng, *shape, scale=2.0, shift=3.0), randn(rng, *shape)
    norm = layer_norm_case(rng, shape, eps)
    w, bias = norm["inputs"][1:]

    def pe_bwd(g, xs, outs, grads):
        ga, gb, gw, gbias = _grads(grads, 4)
        return K.add_layer_norm_backward(g, xs[0], xs[1], xs[2], outs[1], outs[2], grad_a=ga, grad_b=gb,
                                         grad_weight=gw, grad_bias=gbias)

    def np_bwd(g, a, b, w, bias):
        dx, dw, dbias = norm["np_bwd"](g, a + b, w, bias)
        return dx, dx, dw, dbias

    return dict(inputs=[a, b, w, bias], pe_fwd=lambda a, b, w, bias: K.add_layer_norm(a, b, w, bias, eps=eps),
                np_fwd=lambda a, b, w, bias: norm["np_fwd"](a + b, w, bias),
                torch_fwd=lambda a, b, w, bias: norm["torch_fwd"](a + b, w, bias), pe_bwd=pe_bwd, np_bwd=np_bwd)


def cross_entropy_case(logits, target, ignore_index):
    valid = target != ignore_index

    def np_fwd(x):
        lse = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
        picked = x[np.arange(len(x)), np.where(valid, target, 0)]
        return np.array(np.nan) if not valid.any() else np.mean((lse - picked)[valid])

    def np_bwd(g, x):
        onehot = np.zeros_like(x)
        onehot[np.arange(len(x))[valid], target[valid]] = 1
        grad = (_np_softmax(x) - onehot) * valid[:, None]
        return (g * grad / max(1, valid.sum()),)

    def torch_fwd(x):
        return TF.cross_entropy(x, torch.from_numpy(target.astype(np.int64)),
                                ignore_index=ignore_index)

    def pe_bwd(g, xs, outs, grads):
        return (K.cross_entropy_backward(g, xs[0], target, ignore_index=ignore_index,
                                         grad_logits=_grads(grads, 1)[0]),)

    return dict(inputs=[logits], pe_fwd=lambda x: K.cross_entropy(x, target, ignore_index=ignore_index),
                np_fwd=np_fwd, torch_fwd=torch_fwd, pe_bwd=pe_bwd, np_bwd=np_bwd)


def make_targets(rng, rows, classes, dtype, ignore, ignore_index):
    target = rng.integers(0, classes, size=rows).astype(dtype)
    if ignore == "some":
        target[::3] = ignore_index
    elif ignore == "all":
        target[:] = ignore_index
    return target


def nll_case(logp, target, ignore_index):
    def pe_bwd(g, xs, outs, grads):
        return (K.nll_loss_backward(g, xs[0], target, ignore_index=ignore_index,
                                    grad_logp=_grads(grads, 1)[0]),)

    def np_fwd(logp):
        keep = target != ignore_index
        return -logp[np.flatnonzero(keep), target[keep]].mean() if keep.any() else np.nan

    def np_bwd(g, logp):
        keep = target != ignore_index
        grad = np.zeros_like(logp)
        grad[np.flatnonzero(keep), target[keep]] = -g / max(keep.sum(), 1)
        return (grad,)

    def torch_fwd(logp):
        return TF.nll_loss(logp, torch.from_numpy(target.astype(np.int64)),
                           ignore_index=ignore_index)

    return dict(inputs=[logp], pe_fwd=lambda x: K.nll_loss(x, target, ignore_index=ignore_index),
                np_fwd=np_fwd, torch_fwd=torch_fwd, pe_bwd=pe_bwd, np_bwd=np_bwd)


# ---------------------------------------------------------------- convolution


def pair(v) -> tuple:
    return (v, v) if isinstance(v, int) else tuple(v)


@dataclass(frozen=True)
class Conv:
    n: int
    c: int
    h: int
    w: int
    k: int
    r: int
    s: int
    stride: object = 1
    padding: object = 0
    dilation: object = 1
    groups: int = 1

    @property
    def geometry(self) -> dict:
        return {"stride": self.stride, "padding": self.padding, "dilation": self.dilation, "groups": self.groups}

    @property
    def weight_shape(self) -> tuple:
        return (self.k, self.c // self.groups, self.r, self.s)

    def out_hw(self) -> tuple:
        (sh, sw), (ph, pw), (dh, dw) = pair(self.stride), pair(self.padding), pair(self.dilation)
        return ((self.h + 2 * ph - dh * (self.r - 1) - 1) // sh + 1,
                (self.w + 2 * pw - dw * (self.s - 1) - 1) // sw + 1)


def np_windows(x, conv: Conv):
    """(N, C, OH, OW, R, S) windows of the zero-padded x, strided and dilated."""
    (sh, sw), (ph, pw), (dh, dw) = pair(conv.stride), pair(conv.padding), pair(conv.dilation)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    extent = (dh * (conv.r - 1) + 1, dw * (conv.s - 1) + 1)
    view = np.lib.stride_tricks.sliding_window_view(xp, extent, axis=(2, 3))
    return view[:, :, ::sh, ::sw, ::dh, ::dw]


def _grouped(windows, w, groups):
    """(N, G, Cg, ...) windows and (G, Kg, Cg, R, S) weights of a grouped convolution."""
    n, c = windows.shape[:2]
    return windows.reshape(n, groups, c // groups, *windows.shape[2:]), w.reshape(groups, -1, *w.shape[1:])


def np_conv(x, w, bias=None, *, conv: Conv):
    windows, wg = _grouped(np_windows(x, conv), w, conv.groups)
    y = np.einsum("ngcpqrs,gkcrs->ngkpq", windows, wg).reshape(x.shape[0], w.shape[0], *windows.shape[3:5])
    return y if bias is None else y + bias[None, :, None, None]


def np_conv_grads(g, x, w, bias=None, *, conv: Conv):
    (sh, sw), (ph, pw), (dh, dw) = pair(conv.stride), pair(conv.padding), pair(conv.dilation)
    oh, ow = g.shape[2:]
    groups = conv.groups
    windows, wg = _grouped(np_windows(x, conv), w, groups)
    gg = g.reshape(g.shape[0], groups, -1, oh, ow)
    gw = np.einsum("ngkpq,ngcpqrs->gkcrs", gg, windows).reshape(w.shape)
    gxp = np.zeros((x.shape[0], groups, x.shape[1] // groups, x.shape[2] + 2 * ph, x.shape[3] + 2 * pw))
    for r in range(conv.r):  # tap (r, s) of output (p, q) reads padded input (p sh + r dh, q sw + s dw)
        for s in range(conv.s):
            gxp[..., r * dh:r * dh + sh * (oh - 1) + 1:sh, s * dw:s * dw + sw * (ow - 1) + 1:sw] += \
                np.einsum("ngkpq,gkc->ngcpq", gg, wg[:, :, :, r, s])
    gxp = gxp.reshape(x.shape[0], x.shape[1], *gxp.shape[3:])
    gx = gxp[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]]
    return (gx, gw) + (() if bias is None else (g.sum(axis=(0, 2, 3)),))


def conv_case(rng, conv: Conv, with_bias: bool):
    x = randn(rng, conv.n, conv.c, conv.h, conv.w)
    w = randn(rng, *conv.weight_shape)
    inputs = [x, w] + ([randn(rng, conv.k)] if with_bias else [])

    def pe_fwd(x, w, bias=None):
        return K.conv2d(x, w, bias, **conv.geometry)

    def torch_fwd(x, w, bias=None):
        return torch.nn.functional.conv2d(x, w, bias, **conv.geometry)

    def pe_bwd(g, xs, outs, grads):
        gx, gw, gb = (None,) * 3 if grads is None else tuple(grads) + (None,) * (3 - len(grads))
        res = K.conv2d_backward(g, xs[0], xs[1], **conv.geometry, needs_bias=with_bias,
                                grad_x=gx, grad_weight=gw, grad_bias=gb)
        return res[:len(xs)]

    return {"inputs": inputs, "pe_fwd": pe_fwd, "np_fwd": lambda *a: np_conv(*a, conv=conv),
            "torch_fwd": torch_fwd, "pe_bwd": pe_bwd,
            "np_bwd": lambda g, *a: np_conv_grads(g, *a, conv=conv)}


def conv_tol(conv: Conv) -> dict:
    # float32 sums of L products of O(1) values err by ~sqrt(L) ulps typically, L at worst: the
    # forward sums C*R*S products, grad_x K*R*S, grad_weight N*OH*OW, grad_bias N*OH*OW.
    oh, ow = conv.out_hw()
    length = max(conv.c // conv.groups * conv.r * conv.s, conv.k * conv.r * conv.s, conv.n * oh * ow)
    return {"atol": 3e-6 * length + 1e-5, "rtol": 1e-4}


# ---------------------------------------------------------------- finite differences

FD_CASES = {
    **{f"matmul-{t}": (lambda r, ta=ta, tb=tb: matmul_case(r, 3, 4, 5, ta, tb, True))
       for t, (ta, tb) in zip(["nn", "tn", "nt", "tt"], TRANS)},
    "matmul-shared_b": lambda r: matmul_case(r, 2, 3, 4, False, True, False, (2,), ()),
    "matmul-shared_a": lambda r: matmul_case(r, 2, 3, 4, True, False, False, (), (2,)),
    **{f"{op}-broadcast": (lambda r, op=op: binary_case(r, op, (2, 1, 3), (4, 1)))
       for op in BINARY},
    **{f"{op}-scalar-{s}": (lambda r, op=op, s=s: scalar_case(r, op, s, (3, 4)))
       for op, s in SCALAR_CASES},
    **{op: (lambda r, op=op: unary_case(r, op, (3, 5), scale=1.5)) for op in UNARY},
    "sum-nonadjacent": lambda r: reduce_case(r, "sum", (2, 3, 4), (0, 2), False),
    "mean-all": lambda r: reduce_case(r, "mean", (2, 3, 4), None, True),
    "mean-last": lambda r: reduce_case(r, "mean", (2, 3, 4), -1, False),
    "softmax": lambda r: softmax_case("softmax", randn(r, 3, 6)),
    "log_softmax": lambda r: softmax_case("log_softmax", randn(r, 3, 6)),
    "layer_norm": lambda r: layer_norm_case(r, (3, 6)),
    "add_layer_norm": lambda r: add_layer_norm_case(r, (3, 6)),
    "cross_entropy": lambda r: cross_entropy_case(randn(r, 5, 4), np.array([0, 3, -100, 1, 3]),
                                                  -100),
    "clamp": lambda r: clamp_case(r, (3, 5), -0.5, 0.75),
    "add_relu": lambda r: add_relu_case(r, (3, 5)),
    "nll_loss": lambda r: nll_case(randn(r, 5, 4), np.array([0, 3, -100, 1, 3]), -100),
    **{f"conv2d-{name}": (lambda r, conv=conv: conv_case(r, conv, with_bias=True)) for name, conv in {
        "3x5-rect": Conv(2, 2, 5, 6, 3, 3, 2, stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
        "1x1-direct": Conv(1, 3, 3, 2, 2, 1, 1),  # one 1x1 image: read in place
        "groups2": Conv(2, 4, 5, 4, 2, 3, 2, stride=(1, 2), padding=1, groups=2),
        "depthwise": Conv(2, 2, 5, 5, 4, 3, 3, stride=2, padding=1, dilation=(1, 2), groups=2)}.items()},
}
