"""pyengine.nn.utils.fuse_conv_bn_eval against torch.nn.utils.fusion.fuse_conv_bn_eval."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import F32, torch

import pyengine as pe
from pyengine import nn
from pyengine.nn.utils import fuse_conv_bn_eval

pytestmark = pytest.mark.skipif(torch is None, reason="needs torch")


def _pair(bias: bool, affine: bool, groups: int = 1, seed: int = 0):
    """A pyengine conv and eval batch norm with non-default statistics, and torch's copies."""
    pe.manual_seed(seed)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=bias, groups=groups)
    bn = nn.BatchNorm2d(6, eps=1e-3, affine=affine)
    rng = np.random.default_rng(seed)
    if affine:
        bn.weight.data[...] = rng.uniform(0.5, 2.0, 6)
        bn.bias.data[...] = rng.standard_normal(6)
    bn.running_mean.data[...] = rng.standard_normal(6)
    bn.running_var.data[...] = rng.uniform(0.2, 3.0, 6)
    conv.eval()
    bn.eval()
    t_conv = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=bias, groups=groups)
    t_bn = torch.nn.BatchNorm2d(6, eps=1e-3, affine=affine)
    t_conv.load_state_dict({k: torch.tensor(np.array(v)) for k, v in conv.state_dict().items()})
    t_bn.load_state_dict({k: torch.tensor(np.array(v)) for k, v in bn.state_dict().items()})
    t_conv.eval()
    t_bn.eval()
    return conv, bn, t_conv, t_bn


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_fused_weights_and_outputs_match_torch(bias, affine, groups):
    """Weight and bias within 2 float32 ulps of torch's (ours are folded in float64, rounded once);
    the fused layer's output within 1e-5 of bn(conv(x)) in both libraries."""
    conv, bn, t_conv, t_bn = _pair(bias, affine, groups)
    fused = fuse_conv_bn_eval(conv, bn)
    t_fused = torch.nn.utils.fusion.fuse_conv_bn_eval(t_conv, t_bn)
    assert isinstance(fused, nn.Conv2d) and fused is not conv and fused.bias is not None
    assert (fused.stride, fused.padding, fused.groups) == (conv.stride, conv.padding, conv.groups)
    for ours, theirs in ((fused.weight, t_fused.weight), (fused.bias, t_fused.bias)):
        theirs = theirs.detach().numpy()
        np.testing.assert_allclose(ours.numpy(), theirs, rtol=2.5e-7, atol=2 * np.spacing(np.abs(theirs).max()))
    x = np.random.default_rng(1).standard_normal((2, 4, 9, 7)).astype(F32)
    with pe.no_grad():
        expected = bn(conv(pe.Tensor(x))).numpy()
        got = fused(pe.Tensor(x)).numpy()
    with torch.no_grad():
        t_expected = t_bn(t_conv(torch.tensor(x))).numpy()
    scale = np.abs(t_expected).max()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(got, t_expected, rtol=1e-5, atol=1e-5 * scale)


def test_the_modules_are_left_alone_and_training_is_refused():
    conv, bn, _, _ = _pair(True, True)
    weight, mean = conv.weight.numpy().copy(), bn.running_mean.numpy().copy()
    fused = fuse_conv_bn_eval(conv, bn)
    np.testing.assert_array_equal(conv.weight.numpy(), weight)
    np.testing.assert_array_equal(bn.running_mean.numpy(), mean)
    fused.weight.data[...] = 0  # its own arrays
    np.testing.assert_array_equal(conv.weight.numpy(), weight)
    bn.train()
    with pytest.raises(ValueError, match="eval"):
        fuse_conv_bn_eval(conv, bn)
    bn.eval()
    untracked = nn.BatchNorm2d(6, track_running_stats=False)
    untracked.eval()
    with pytest.raises(ValueError, match="running statistics"):
        fuse_conv_bn_eval(conv, untracked)
    other = nn.BatchNorm2d(5)
    other.eval()
    with pytest.raises(ValueError, match="5 features"):
        fuse_conv_bn_eval(conv, other)
