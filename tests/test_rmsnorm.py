"""RMS norm (csrc/rmsnorm) at every ISA level: the kernel pair against float64 numpy and
torch.nn.functional.rms_norm, gradient accumulation, finite differences, and the surface
(F.rms_norm, nn.RMSNorm) against torch's autograd."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from helpers import assert_close, check_finite_differences, helper_test_op, randn, torch

from pyengine import Tensor, nn
from pyengine import functional as F
from pyengine import kernels as K

pytestmark = pytest.mark.usefixtures("isa")


def rng_for(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def rms_norm_case(rng, shape, eps=1e-6):
    cols = shape[-1]
    x, w = randn(rng, *shape, scale=2.0, shift=0.5), randn(rng, cols)

    def ref_fwd(x, w):  # numpy arrays or torch tensors
        rstd = 1 / ((x * x).mean(-1) + eps) ** 0.5
        return x * rstd[..., None] * w, rstd

    def torch_fwd(x, w):
        return torch.nn.functional.rms_norm(x, (cols,), w, eps), ref_fwd(x, w)[1]

    def pe_bwd(g, xs, outs, grads):
        gx, gw = (None, None) if grads is None else grads
        return K.rms_norm_backward(g, xs[0], xs[1], outs[1], grad_x=gx, grad_weight=gw)

    def np_bwd(g, x, w):
        _, rstd = ref_fwd(x, w)
        xhat = x * rstd[..., None]
        gw = g * w
        dx = rstd[..., None] * (gw - xhat * (gw * xhat).mean(-1, keepdims=True))
        return dx, (g * xhat).reshape(-1, cols).sum(0)

    return dict(inputs=[x, w], pe_fwd=lambda x, w: K.rms_norm(x, w, eps=eps), np_fwd=ref_fwd, torch_fwd=torch_fwd,
                pe_bwd=pe_bwd, np_bwd=np_bwd)


@pytest.mark.parametrize("cols", [1, 5, 33, 512])
@pytest.mark.parametrize("rows", [1, 7, 64])
def test_rms_norm(rows, cols):
    case = rms_norm_case(rng_for(rows, cols), (rows, cols))
    out, _ = helper_test_op(**case, atol=2e-5, rtol=1e-4, grad_atol=1e-4, grad_rtol=1e-4)
    assert out[0].shape == (rows, cols) and out[1].shape == (rows,)


def test_rms_norm_batched_rows_and_eps():
    case = rms_norm_case(rng_for("3d"), (2, 3, 33), eps=1e-2)
    out, _ = helper_test_op(**case, atol=2e-5, rtol=1e-4, grad_atol=1e-4, grad_rtol=1e-4)
    assert out[1].shape == (2, 3)


def test_rms_norm_finite_differences():
    case = rms_norm_case(rng_for("fd"), (3, 6))
    check_finite_differences(case["inputs"], case["pe_fwd"], case["pe_bwd"], eps=1e-2)


def test_rms_norm_backward_skips_unrequested_grads():
    rng = rng_for("skip")
    x, w, gy = randn(rng, 4, 9), randn(rng, 9), randn(rng, 4, 9)
    _, rstd = K.rms_norm(x, w)
    full = K.rms_norm_backward(gy, x, w, rstd)
    only_x = K.rms_norm_backward(gy, x, w, rstd, needs_weight=False)
    only_w = K.rms_norm_backward(gy, x, w, rstd, needs_x=False)
    assert only_x[1] is None and only_w[0] is None
    np.testing.assert_array_equal(only_x[0], full[0])
    np.testing.assert_array_equal(only_w[1], full[1])


def test_rms_norm_rejects_negative_eps_and_wrong_weight():
    x = np.ones((2, 4), np.float32)
    with pytest.raises(ValueError, match="eps"):
        K.rms_norm(x, np.ones(4, np.float32), eps=-1.0)
    with pytest.raises(ValueError, match=r"rms_norm_forward.*\(5,\)"):
        K.rms_norm(x, np.ones(5, np.float32))
    with pytest.raises(ValueError, match="normalized_shape"):
        F.rms_norm(Tensor(x), 3)


@pytest.mark.skipif(torch is None, reason="needs torch")
@pytest.mark.parametrize("eps", [1e-6, None])
def test_rms_norm_module_matches_torch(eps):
    rng = rng_for("module", eps)
    x = randn(rng, 2, 3, 48)
    ours, theirs = nn.RMSNorm(48, eps=eps), torch.nn.RMSNorm(48, eps=eps)
    weight = randn(rng, 48)
    ours.weight.data[...] = weight
    with torch.no_grad():
        theirs.weight.copy_(torch.tensor(weight))
    xp, xt = Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    yp, yt = ours(xp), theirs(xt)
    assert_close(yp.numpy(), yt.detach().numpy(), atol=1e-5, rtol=1e-5, what="forward")
    g = randn(rng, 2, 3, 48)
    (yp * Tensor(g)).sum().backward()
    (yt * torch.tensor(g)).sum().backward()
    assert_close(xp.grad.numpy(), xt.grad.numpy(), atol=1e-5, rtol=1e-4, what="input grad")
    assert_close(ours.weight.grad.numpy(), theirs.weight.grad.numpy(), atol=1e-5, rtol=1e-4, what="weight grad")


def test_rms_norm_without_weight():
    rng = rng_for("noweight")
    x = randn(rng, 3, 10)
    y = F.rms_norm(Tensor(x), (10,), None, 1e-6).numpy()
    x64 = x.astype(np.float64)
    assert_close(y, x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + 1e-6), atol=1e-6, rtol=1e-5, what="y")
    assert nn.RMSNorm(10, elementwise_affine=False).weight is None
