"""conv2d at every ISA level (the reference loops included): forward and the three gradients
against a float64 numpy reference and PyTorch autograd in float64, gradient accumulation,
partial gradient requests (the finite differences are FD_CASES of
reference_cases.py, run by test_kernels.py) and thread-count independence.

The cases cover odd shapes, every kernel path (the 1x1 stride-1 unpadded image read in place,
images cut into blocks of output rows, small images batched into one GEMM in even chunks, chunks
cut by the cols budget, chunks spread over the threads with partial dW sums, GEMMs shared by the
threads) and the geometry (kernel 1x1 to 7x7 and rectangular, stride 1 to
3, padding 0 to 3, dilation 1 and 2).
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import F32, helper_test_op, randn
from reference_cases import Conv, conv_case, conv_tol, rng_for

import pyengine
from pyengine import kernels as K

pytestmark = pytest.mark.usefixtures("isa")  # every test runs once per available ISA level


# The kernel's paths (conv2d.cpp): an image of more than 512 output pixels is cut into blocks of
# output rows of about 512 pixels (unless it is 1x1: then it stays whole, and with stride 1 and no
# padding it is read in place);
# smaller images are batched, about 2048 pixels and at most 2^22 floats of cols a chunk, chunks
# as even as possible. The backward spreads units of chunks (an image's blocks, or a chunk of
# images) over the threads in up to 8 runs, one partial dW each; a single unit shares each GEMM's
# threads (so does a forward of fewer than two chunks a thread). Comments name the chunks.
CASES = {
    "1x1-direct-N1": Conv(1, 9, 5, 11, 7, 1, 1),                   # cols = x, dcols = dx
    "1x1-direct": Conv(2, 3, 48, 45, 4, 1, 1),                     # 2160 pixels: 1 + 1, in place
    "1x1-batched": Conv(2, 5, 7, 6, 3, 1, 1),                      # 2 images gathered
    "1x1-stride2": Conv(2, 3, 9, 8, 5, 1, 1, stride=2),
    # A 1x1 image of more than 512 pixels stays whole (its strided pixels gathered once, Y = y).
    "1x1-stride2-whole": Conv(2, 3, 50, 47, 4, 1, 1, stride=2),          # 25x24 = 600 pixels
    "1x1-stride2-pad1-whole": Conv(1, 5, 47, 52, 3, 1, 1, stride=2, padding=1),  # 25x27
    "1x1-pad1": Conv(1, 4, 5, 5, 3, 1, 1, padding=1),
    "3x3-pad1-N1": Conv(1, 3, 9, 11, 5, 3, 3, padding=1),
    "3x3-stride2-pad1": Conv(3, 4, 10, 9, 7, 3, 3, stride=2, padding=1),
    "3x3-dilation2": Conv(2, 3, 11, 10, 5, 3, 3, padding=2, dilation=2),
    "5x5-stride3-pad3": Conv(2, 3, 13, 12, 5, 5, 5, stride=3, padding=3),
    "7x7-stride2-pad3": Conv(2, 3, 17, 15, 9, 7, 7, stride=2, padding=3),
    "3x5-rect": Conv(2, 5, 9, 12, 3, 3, 5, stride=(2, 1), padding=(1, 2), dilation=(2, 1)),
    "5x2-rect-mixed": Conv(3, 3, 14, 8, 4, 5, 2, stride=(3, 2), padding=(0, 3), dilation=(1, 2)),
    "kernel-fills-input": Conv(2, 3, 5, 4, 7, 5, 4),               # a single output pixel
    "pad-exceeds-kernel": Conv(1, 2, 3, 3, 3, 2, 2, stride=3, padding=3),  # all-padding rows
    "many-images": Conv(21, 2, 6, 7, 3, 3, 3, stride=(1, 2), padding=1),   # 21 in one chunk
    "uneven-chunks": Conv(17, 2, 15, 20, 3, 3, 3, padding=1),      # 300 pixels: 5+6+6 images
    "cols-budget": Conv(4, 456, 16, 16, 3, 3, 3, padding=1),       # 1.05M floats of cols: 2 + 2
    "row-blocks": Conv(3, 2, 46, 47, 3, 3, 3, padding=1),          # rows 9+9+9+9+10 an image
    "row-blocks-strided": Conv(2, 3, 60, 50, 4, 5, 3, stride=(2, 1), padding=(2, 1),
                               dilation=(1, 2)),                   # 30x48 out: rows 10+10+10
    "two-runs": Conv(2, 16, 24, 24, 32, 3, 3, padding=3),          # rows 14+14 of 2 images
    "shared-gemm": Conv(1, 64, 24, 24, 64, 3, 3, padding=3),       # rows 14+14 of 1: 28.9M MACs
    "wide-weight": Conv(3, 128, 3, 3, 64, 3, 3),                   # dW (64, 1152), 1 pixel
    # Groups: one GEMM per group of each chunk; one input channel a group runs the direct loops.
    "groups2-3x3": Conv(2, 6, 9, 8, 4, 3, 3, padding=1, groups=2),
    "groups3-strided-dilated": Conv(3, 6, 11, 10, 9, 3, 2, stride=(2, 1), padding=(2, 1), dilation=(2, 1),
                                    groups=3),
    "groups2-1x1-direct": Conv(2, 4, 7, 6, 6, 1, 1, groups=2),     # each group's x read in place
    "groups4-row-blocks": Conv(2, 8, 40, 41, 8, 3, 3, padding=1, groups=4),
    "depthwise-3x3": Conv(2, 5, 9, 11, 5, 3, 3, padding=1, groups=5),
    "depthwise-mult2-s2": Conv(3, 3, 10, 9, 6, 3, 3, stride=2, padding=1, groups=3),  # 2 outputs a channel
    "depthwise-5x5-s3-d2": Conv(2, 4, 17, 13, 4, 5, 5, stride=(3, 2), padding=(4, 2), dilation=2, groups=4),
    "depthwise-large": Conv(4, 32, 28, 28, 32, 3, 3, padding=1, groups=32),  # split over threads
    # The register-blocked depthwise loops (depthwise.cpp): blocks of 8 output vectors, the last
    # one repeated; stride-2 columns in two phases of the padded copy; dx in stride x stride
    # phases (through a scratch row when the column stride is > 1); dw in blocks of 9, 3, 1 taps.
    "depthwise-s2-N1": Conv(1, 7, 15, 17, 7, 3, 3, stride=2, padding=1, groups=7),
    "depthwise-s2-even": Conv(2, 4, 28, 28, 4, 3, 3, stride=2, padding=1, groups=4),  # 14 wide
    "depthwise-wide": Conv(2, 3, 6, 53, 3, 3, 3, padding=1, groups=3),  # 53 = 3 x 16 + 5 columns
    "depthwise-dilated-pad": Conv(2, 3, 12, 13, 3, 3, 3, padding=(3, 2), dilation=(2, 3), groups=3),
    "depthwise-pad-exceeds": Conv(2, 3, 4, 5, 3, 2, 2, stride=(1, 2), padding=2, groups=3),
    "depthwise-7x7-mult3": Conv(2, 2, 11, 10, 6, 7, 7, padding=3, groups=2),  # 49 taps, 3 a channel
    "depthwise-5x3-s2x3": Conv(2, 3, 16, 19, 3, 5, 3, stride=(2, 3), padding=(2, 1), groups=3),
    "depthwise-1x1": Conv(2, 4, 5, 7, 4, 1, 1, groups=4),
    "depthwise-stride-exceeds-width": Conv(1, 2, 5, 2, 2, 3, 3, stride=3, padding=2, groups=2),
    "depthwise-large-s2": Conv(4, 32, 29, 29, 32, 3, 3, stride=2, padding=1, groups=32),
    "one-channel-5x5": Conv(3, 1, 12, 12, 6, 5, 5, padding=2),     # groups 1, C 1: the direct loops
    # Winograd F(4x4, 3x3): 3x3, stride 1, padding <= 2, at least 16 channels in and out and a
    # 4x4 output. Tiles of 4x4 output pixels cut at the edges, up to 16 tiles a vector (AVX-512),
    # chunks of whole tile rows (about 128 tiles); dx is the same algorithm on dy, dw its own.
    # At least 32 tiles in all (winograd_fits; checked below), or im2col runs instead.
    "winograd-pad1": Conv(3, 16, 13, 11, 17, 3, 3, padding=1),     # 13x11 out: edge tiles cut
    "winograd-pad0": Conv(8, 17, 10, 9, 16, 3, 3),                 # 8x7 out, dx padded by 2
    "winograd-pad2": Conv(6, 16, 7, 6, 18, 3, 3, padding=2),       # 9x8 out, dx unpadded
    "winograd-pad-mixed": Conv(4, 16, 9, 14, 16, 3, 3, padding=(0, 2)),
    "winograd-wide": Conv(1, 16, 6, 75, 16, 3, 3, padding=1),      # 19 tiles a row: two vectors
    "winograd-chunks": Conv(3, 16, 45, 50, 20, 3, 3, padding=1),   # 36 tile rows of 13: 4 chunks
}



def winograd_tiles(conv: Conv) -> int:
    """The 4x4 output tiles of a layer, all images: Winograd needs 32 (csrc/conv/winograd.cpp)."""
    oh, ow = conv.out_hw()
    return conv.n * -(-oh // 4) * -(-ow // 4)


assert all(winograd_tiles(conv) >= 32 for name, conv in CASES.items() if name.startswith("winograd")), \
    "a winograd-* case too small for Winograd tests im2col instead"


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("name", list(CASES))
def test_conv2d(name, with_bias):
    conv = CASES[name]
    tol = conv_tol(conv)
    out, grads = helper_test_op(**conv_case(rng_for(name, with_bias), conv, with_bias), **tol)
    assert out[0].shape == (conv.n, conv.k, *conv.out_hw())
    assert all(np.abs(g).max() > 0 for g in grads)


@pytest.mark.parametrize("name", ["1x1-direct", "1x1-batched", "7x7-stride2-pad3", "uneven-chunks",
                                  "row-blocks-strided", "shared-gemm", "groups2-1x1-direct", "depthwise-mult2-s2",
                                  "depthwise-s2-N1", "depthwise-5x3-s2x3", "winograd-chunks"])
def test_conv2d_partial_gradients(name):
    """Asking for one gradient gives what the full backward gives (every path skips the rest)."""
    conv = CASES[name]
    rng = rng_for("partial", name)
    x, w = randn(rng, conv.n, conv.c, conv.h, conv.w), randn(rng, *conv.weight_shape)
    g = randn(rng, conv.n, conv.k, *conv.out_hw())
    gx, gw, gb = K.conv2d_backward(g, x, w, **conv.geometry, needs_bias=True)
    only_x = K.conv2d_backward(g, x, w, **conv.geometry, needs_weight=False)
    only_w = K.conv2d_backward(g, x, w, **conv.geometry, needs_x=False)
    only_b = K.conv2d_backward(g, x, w, **conv.geometry, needs_x=False, needs_weight=False,
                               needs_bias=True)
    assert only_x[1:] == (None, None) and only_w[0] is None and only_b[:2] == (None, None)
    np.testing.assert_array_equal(only_x[0], gx)
    np.testing.assert_array_equal(only_w[1], gw)
    np.testing.assert_array_equal(only_b[2], gb)


THREAD_CASES = ["1x1-direct", "1x1-batched", "1x1-stride2-whole", "7x7-stride2-pad3", "many-images", "uneven-chunks",
                "cols-budget", "row-blocks-strided", "two-runs", "shared-gemm", "groups4-row-blocks",
                "depthwise-large", "depthwise-large-s2", "winograd-chunks", "winograd-wide"]


def test_conv2d_thread_count_independent(restore_threads):
    """The chunks depend on the shapes only and each element has one summation order: bitwise
    equal results with 1 and 2 threads (the larger cases split every pass over the threads)."""
    rng = rng_for("threads")
    problems = []
    for name in THREAD_CASES:
        conv = CASES[name]
        problems.append((conv, randn(rng, conv.n, conv.c, conv.h, conv.w),
                         randn(rng, *conv.weight_shape), randn(rng, conv.k),
                         randn(rng, conv.n, conv.k, *conv.out_hw())))

    def run_all(threads):
        pyengine.set_num_threads(threads)
        assert pyengine.get_num_threads() == threads
        results = []
        for conv, x, w, b, g in problems:
            y = K.conv2d(x, w, b, **conv.geometry)
            init = [np.full(x.shape, 0.5, F32), np.full(w.shape, -0.25, F32), np.ones(b.shape, F32)]
            K.conv2d_backward(g, x, w, **conv.geometry, needs_bias=True, grad_x=init[0],
                              grad_weight=init[1], grad_bias=init[2])
            results.append([y, *init])
        return results

    one, two = run_all(1), run_all(2)
    for name, r1, r2 in zip(THREAD_CASES, one, two, strict=True):
        for what, a, b in zip(("y", "grad_x", "grad_weight", "grad_bias"), r1, r2, strict=True):
            np.testing.assert_array_equal(b, a, err_msg=f"{name} {what}: 1 vs 2 threads")


def test_conv2d_winograd_error():
    """Winograd's transforms add and subtract terms up to 8x and 1/24x the inputs, so its float32
    error is larger than im2col's: on a ResNet-shaped layer with unit normal inputs, against
    float64 as a fraction of the largest |value|, measured 5.6e-6 forward, 5.0e-6 grad_x and
    4.0e-6 grad_weight (im2col's forward on the same data: 8.1e-7). The bound checked is 4e-5."""
    conv = Conv(2, 64, 20, 20, 64, 3, 3, padding=1)
    rng = rng_for("winograd-error")
    x, w = randn(rng, conv.n, conv.c, conv.h, conv.w), randn(rng, *conv.weight_shape)
    g = randn(rng, conv.n, conv.k, *conv.out_hw())
    y = K.conv2d(x, w, **conv.geometry)
    gx, gw, _ = K.conv2d_backward(g, x, w, **conv.geometry)
    torch = pytest.importorskip("torch")
    xd, wd = torch.from_numpy(x).double().requires_grad_(), torch.from_numpy(w).double().requires_grad_()
    yd = torch.nn.functional.conv2d(xd, wd, padding=1)
    yd.backward(torch.from_numpy(g).double())
    for what, got, want in (("y", y, yd), ("grad_x", gx, xd.grad), ("grad_weight", gw, wd.grad)):
        want = want.detach().numpy()
        error = np.abs(got - want).max() / np.abs(want).max()
        assert error < 4e-5, f"{what}: error {error:.2e} of the largest |value|"


def test_conv2d_shape_and_pairs():
    assert K.conv2d_shape((2, 3, 224, 224), (64, 3, 7, 7), 2, 3) == (2, 64, 112, 112)
    assert K.conv2d_shape((1, 1, 5, 9), (1, 1, 3, 3), (1, 2), (0, 1), (2, 1)) == (1, 1, 1, 5)
    x, w = np.ones((1, 2, 6, 6), F32), np.ones((3, 2, 3, 3), F32)
    np.testing.assert_array_equal(K.conv2d(x, w, stride=2, padding=1),
                                  K.conv2d(x, w, stride=(2, 2), padding=[1, 1]))


def test_conv2d_empty_batch():
    x, w, b = np.ones((0, 3, 5, 5), F32), np.ones((4, 3, 3, 3), F32), np.ones(4, F32)
    assert K.conv2d(x, w, b).shape == (0, 4, 3, 3)
    gx, gw, gb = K.conv2d_backward(np.ones((0, 4, 3, 3), F32), x, w, needs_bias=True,
                                   grad_weight=np.full(w.shape, 2.0, F32))
    assert gx.shape == x.shape
    np.testing.assert_array_equal(gw, 2.0)  # nothing added
    np.testing.assert_array_equal(gb, 0.0)


def test_conv2d_groups_errors():
    x = np.ones((1, 6, 5, 5), F32)
    with pytest.raises(ValueError, match="groups=4 must divide"):
        K.conv2d(x, np.ones((4, 1, 3, 3), F32), groups=4)
    with pytest.raises(ValueError, match=r"expected \(4, 3, 3, 3\) for x \(1, 6, 5, 5\) with groups=2"):
        K.conv2d(x, np.ones((4, 2, 3, 3), F32), groups=2)
    with pytest.raises(ValueError, match="does not fit"):
        K.conv2d(x, np.ones((6, 1, 7, 7), F32), padding=0, groups=6)
    with pytest.raises(ValueError, match="groups must be >= 1"):
        K.conv2d(x, np.ones((6, 6, 3, 3), F32), groups=0)
    with pytest.raises(ValueError, match="groups=4 must be positive and divide in_channels=6"):
        pyengine.nn.Conv2d(6, 8, 3, groups=4)


ACTIVATIONS = {"relu": K.relu, "gelu": K.gelu, "gelu_erf": K.gelu_erf}


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("name", list(CASES))
def test_conv2d_activation_is_the_two_kernels_bit_for_bit(name, with_bias):
    """activation= applies the activation in the pass that writes y (the bias pass, the GEMM's
    epilogue for a whole image without bias, the depthwise plane): exactly the activation's own
    kernel on the plain convolution, on every path; relu on every case, the GELUs on a few."""
    conv = CASES[name]
    rng = rng_for("activation", name, with_bias)
    x, w = randn(rng, conv.n, conv.c, conv.h, conv.w), randn(rng, *conv.weight_shape)
    bias = randn(rng, conv.k) if with_bias else None
    plain = K.conv2d(x, w, bias, **conv.geometry)
    chosen = ACTIVATIONS if name in ("1x1-direct", "row-blocks", "many-images", "depthwise-3x3") else ["relu"]
    for activation in chosen:
        fused = K.conv2d(x, w, bias, **conv.geometry, activation=activation)
        np.testing.assert_array_equal(fused, ACTIVATIONS[activation](plain), err_msg=activation)
    assert (K.conv2d(x, w, bias, **conv.geometry, activation="relu") >= 0).all()
    assert (plain < 0).any() or name == "pad-exceeds-kernel"  # its few outputs happen to be >= 0


def test_conv2d_activation_against_float64():
    """relu(conv) against float64 numpy through the reference test's tolerances."""
    conv = CASES["3x3-stride2-pad1"]
    case = conv_case(rng_for("activation-f64"), conv, True)
    x, w, b = case["inputs"]
    expected = np.maximum(case["np_fwd"](*(v.astype(np.float64) for v in (x, w, b))), 0)
    got = K.conv2d(x, w, b, **conv.geometry, activation="relu")
    np.testing.assert_allclose(got, expected, **conv_tol(conv))
    with pytest.raises(ValueError, match="activation"):
        K.conv2d(x, w, b, **conv.geometry, activation="tanh")
