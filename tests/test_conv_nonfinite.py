"""Where inf and NaN land in conv2d, at every ISA level: what pyengine promises, tested.

conv2d is defined with zero padding (its declaration): each output sums all Cg * R * S taps, a tap
in the padding reading 0, so an inf or NaN weight makes NaN (0 * inf) at every output whose window
reaches the padding, and an inf or NaN output gradient makes NaN in the weight gradient of every
tap that reads the padding there. Which outputs are NaN, +inf, -inf or finite does not depend on
the order of the sums (a sum is NaN exactly when a term is NaN or it holds both infinities), so
the im2col GEMM, the direct (depthwise) loops and the float64 reference must agree on every element,
and with PyTorch's float64 (the same definition): nothing spreads into another group, channel or
pixel, neither through im2col nor through the GEMM's zero-padded panels.

Winograd F(4x4, 3x3) (3x3, stride 1, >= 16 channels) is the exception, by its algorithm, as in
oneDNN's and cuDNN's Winograd: each 4x4 output tile is a mix of its whole 6x6 input window (and a
weight's transform mixes its nine taps), so a non-finite input may make NaN anywhere in the tiles
whose window holds it, where the direct sum gives inf or a finite value, and a non-finite weight
anywhere in its output channel. The promise there: every output the definition makes non-finite is
non-finite, and every other output (outside those tiles and channels) is finite and as accurate as
ever.
"""

from __future__ import annotations

import numpy as np
import pytest
from reference_cases import Conv

import pyengine
from pyengine import kernels as K

pytestmark = pytest.mark.usefixtures("isa")  # every test runs once per available ISA level

F32 = np.float32
SPECIALS = np.array([np.inf, -np.inf, np.nan], F32)

# Every non-Winograd path: im2col groups (Cg >= 2), the direct loops (one input channel a group), a
# one-channel image; padding, stride and dilation that put taps in the padding.
CASES = {
    "groups2-pad1": Conv(2, 6, 5, 4, 4, 3, 3, padding=1, groups=2),
    "groups3-strided-dilated": Conv(2, 9, 7, 6, 6, 3, 2, stride=(2, 1), padding=(2, 1), dilation=(2, 1), groups=3),
    "groups2-1x1-pad2": Conv(1, 6, 4, 4, 2, 1, 1, padding=2, groups=2),
    "groups1-pad1": Conv(2, 3, 6, 5, 4, 3, 3, padding=1),
    "depthwise-pad1": Conv(2, 4, 6, 5, 4, 3, 3, padding=1, groups=4),
    "depthwise-mult2-s2-d2": Conv(2, 3, 7, 6, 6, 3, 2, stride=2, padding=(2, 1), dilation=2, groups=3),
    "one-channel-pad2": Conv(3, 1, 5, 6, 2, 3, 3, padding=2),
}


def _with_specials(rng, shape, fraction):
    values = rng.standard_normal(shape).astype(F32)
    where = rng.random(shape) < fraction
    values[where] = rng.choice(SPECIALS, size=int(where.sum()))
    return values


def _assert_same_pattern(got, want, what):
    """NaN, +inf and -inf at the same elements; the finite ones close."""
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaN elements")
    for sign in (np.inf, -np.inf):
        np.testing.assert_array_equal(got == sign, want == sign, err_msg=f"{what}: {sign} elements")
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-4, atol=1e-4, err_msg=what)


def _torch_conv(x, w, conv):
    import torch
    return torch.nn.functional.conv2d(torch.from_numpy(x.astype(np.float64)), torch.from_numpy(w.astype(np.float64)),
                                      None, **conv.geometry).numpy()


def _torch_dw(dy, x, w, conv):
    import torch
    tx, tw = torch.from_numpy(x.astype(np.float64)), torch.from_numpy(w.astype(np.float64)).requires_grad_()
    torch.nn.functional.conv2d(tx, tw, None, **conv.geometry).backward(torch.from_numpy(dy.astype(np.float64)))
    return tw.grad.numpy()


@pytest.mark.parametrize("where", ["x", "weight"])
@pytest.mark.parametrize("name", list(CASES))
def test_nonfinite_forward_lands_where_the_definition_puts_it(name, where):
    conv = CASES[name]
    rng = np.random.default_rng([7, len(name), len(where)])
    x_shape, w_shape = (conv.n, conv.c, conv.h, conv.w), conv.weight_shape
    for trial in range(4):
        x = _with_specials(rng, x_shape, 0.1 if where == "x" else 0.0)
        w = _with_specials(rng, w_shape, 0.1 if where == "weight" else 0.0)
        y = K.conv2d(x, w, **conv.geometry)
        with pyengine.use_isa("reference"):
            reference = K.conv2d(x, w, **conv.geometry)
        _assert_same_pattern(y, reference, f"{name} trial {trial} against the reference")
        _assert_same_pattern(y, _torch_conv(x, w, conv), f"{name} trial {trial} against torch")


@pytest.mark.parametrize("name", list(CASES))
def test_nonfinite_output_gradient_lands_where_the_definition_puts_it(name):
    conv = CASES[name]
    rng = np.random.default_rng([8, len(name)])
    x, w = rng.standard_normal((conv.n, conv.c, conv.h, conv.w)).astype(F32), rng.standard_normal(
        conv.weight_shape).astype(F32)
    for trial in range(4):
        dy = _with_specials(rng, (conv.n, conv.k, *conv.out_hw()), 0.05)
        dx, dw, _ = K.conv2d_backward(dy, x, w, **conv.geometry)
        with pyengine.use_isa("reference"):
            ref_dx, ref_dw, _ = K.conv2d_backward(dy, x, w, **conv.geometry)
        _assert_same_pattern(dx, ref_dx, f"{name} trial {trial}: dx")
        _assert_same_pattern(dw, ref_dw, f"{name} trial {trial}: dw")
        _assert_same_pattern(dw, _torch_dw(dy, x, w, conv), f"{name} trial {trial}: dw against torch")


def test_an_inf_depthwise_tap_is_nan_exactly_where_it_reads_the_padding():
    """The direct loops skip the padding; its products (w * 0) are added where they are NaN."""
    conv = CASES["depthwise-pad1"]
    rng = np.random.default_rng(9)
    x, w = rng.standard_normal((conv.n, conv.c, conv.h, conv.w)).astype(F32), rng.standard_normal(
        conv.weight_shape).astype(F32)
    w[1, 0, 0, 0] = np.inf  # channel 1's first tap reads the padding at the top row and left column
    y = K.conv2d(x, w, **conv.geometry)
    assert np.isnan(y[:, 1, 0, :]).all() and np.isnan(y[:, 1, :, 0]).all()
    assert np.isposinf(y[:, 1, 1:, 1:]).sum() + np.isneginf(y[:, 1, 1:, 1:]).sum() == y[:, 1, 1:, 1:].size
    assert np.isfinite(np.delete(y, 1, axis=1)).all()


def test_gemm_edge_panels_do_not_spread_nonfinite_values():
    """A GEMM of odd sizes (its packed panels zero padded at the edges): an inf or NaN in a row of a
    reaches exactly that row of c, one in a column of b that column, as numpy's float64 product."""
    rng = np.random.default_rng(10)
    for m, k, n in ((13, 17, 29), (1, 5, 33), (31, 1, 7), (67, 130, 9)):
        a, b = rng.standard_normal((m, k)).astype(F32), rng.standard_normal((k, n)).astype(F32)
        a[m // 2, k // 3], b[k - 1, n - 1], b[0, 0] = np.inf, np.nan, -np.inf
        with np.errstate(invalid="ignore"):
            want = a.astype(np.float64) @ b.astype(np.float64)
        _assert_same_pattern(K.matmul(a, b), want, f"matmul {m}x{k}x{n}")


# ---- Winograd: the spread stays in the tiles (forward and dx) and channels (a weight) it touches
WINOGRAD = Conv(3, 16, 13, 11, 16, 3, 3, padding=1)  # 13x11 outputs: 4x3 tiles an image, edges cut: 36 >= 32


def _tiles_reading(bad, pad, out_hw):
    """The outputs (N, OH, OW) of every 4x4 tile whose 6x6 input window (rows 4 t - pad .. + 6) holds
    a True of bad (N, H, W)."""
    n, h, w = bad.shape
    spread = np.zeros((n, *out_hw), bool)
    for i, r, c in zip(*np.nonzero(bad)):
        for tr in range(0, out_hw[0], 4):
            for tc in range(0, out_hw[1], 4):
                if tr - pad[0] <= r < tr - pad[0] + 6 and tc - pad[1] <= c < tc - pad[1] + 6:
                    spread[i, tr:tr + 4, tc:tc + 4] = True
    return spread


def _assert_contained(got, want, allowed, what):
    """Non-finite wherever want is; elsewhere outside `allowed`, finite and close to want."""
    assert not np.isfinite(got[~np.isfinite(want)]).any(), f"{what}: finite where the definition is not"
    keep = ~allowed & np.isfinite(want)
    assert np.isfinite(got[keep]).all(), f"{what}: a non-finite value outside its tiles"
    scale = np.abs(want[keep]).max()
    np.testing.assert_allclose(got[keep], want[keep], rtol=0, atol=2e-5 * scale, err_msg=what)


def test_winograd_keeps_a_nonfinite_input_in_the_tiles_that_read_it():
    conv = WINOGRAD
    rng = np.random.default_rng(11)
    x, w = rng.standard_normal((conv.n, conv.c, conv.h, conv.w)).astype(F32), rng.standard_normal(
        conv.weight_shape).astype(F32)
    bad = np.zeros((conv.n, conv.h, conv.w), bool)
    for (i, c, r, s), value in zip(((0, 3, 0, 0), (0, 5, 6, 5), (2, 15, 12, 10)), SPECIALS):
        x[i, c, r, s], bad[i, r, s] = value, True
    y = K.conv2d(x, w, **conv.geometry)
    with pyengine.use_isa("reference"):
        reference = K.conv2d(x, w, **conv.geometry)
    allowed = np.broadcast_to(_tiles_reading(bad, (1, 1), conv.out_hw())[:, None], y.shape)
    _assert_contained(y, reference, allowed, "forward, inf/NaN in x")
    if pyengine.get_isa() != "reference":  # Winograd ran: it spread a NaN within a tile
        assert (np.isnan(y) & ~np.isnan(reference)).any()
    # dx is the same algorithm on dy (padded by 2 - padding) with the flipped weight
    dy = rng.standard_normal(y.shape).astype(F32)
    dy[0, 2, 4, 4], dy[2, 9, 0, 10] = np.inf, np.nan
    dx, _, _ = K.conv2d_backward(dy, x, w, **conv.geometry, needs_weight=False)
    with pyengine.use_isa("reference"):
        ref_dx, _, _ = K.conv2d_backward(dy, x, w, **conv.geometry, needs_weight=False)
    dy_bad = ~np.isfinite(dy).all(axis=1)
    allowed = np.broadcast_to(_tiles_reading(dy_bad, (1, 1), (conv.h, conv.w))[:, None], dx.shape)
    _assert_contained(dx, ref_dx, allowed, "dx, inf/NaN in dy")


def test_winograd_keeps_a_nonfinite_weight_in_its_output_channel():
    conv = WINOGRAD
    rng = np.random.default_rng(12)
    x, w = rng.standard_normal((conv.n, conv.c, conv.h, conv.w)).astype(F32), rng.standard_normal(
        conv.weight_shape).astype(F32)
    w[4, 7, 1, 1], w[9, 0, 2, 0] = np.inf, np.nan
    y = K.conv2d(x, w, **conv.geometry)
    with pyengine.use_isa("reference"):
        reference = K.conv2d(x, w, **conv.geometry)
    allowed = np.zeros(y.shape, bool)
    allowed[:, [4, 9]] = True
    _assert_contained(y, reference, allowed, "forward, inf/NaN in the weight")
    if pyengine.get_isa() != "reference":  # the weight's transform mixed its taps
        assert np.isnan(y[:, 4]).sum() > np.isnan(reference[:, 4]).sum()
