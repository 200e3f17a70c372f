"""Layers: Linear, Conv2d, LayerNorm, activations, Sequential, losses."""

from __future__ import annotations

import math

import numpy as np

from pyengine import functional as F
from pyengine import ops as O
from pyengine.nn.module import Module, Parameter
from pyengine.random import default_generator


class Linear(Module):
    """y = x @ weight.T + bias; weight is (out_features, in_features) as in PyTorch.

    Initialised like PyTorch: uniform in +-1/sqrt(in_features), drawn from
    `generator` (or pyengine's default generator, see pyengine.manual_seed).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, generator=None):
        super().__init__()
        rng = generator or default_generator()
        bound = 1.0 / math.sqrt(in_features) if in_features else 0.0
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(rng.uniform(-bound, bound, (out_features, in_features)).astype(np.float32))
        self.bias = Parameter(rng.uniform(-bound, bound, (out_features,)).astype(np.float32)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Conv2d(Module):
    """2-D convolution over (N, C, H, W); weight is (out_channels, in_channels / groups, kh, kw) as in PyTorch.

    kernel_size, stride, padding and dilation are ints or (h, w) pairs.
    Initialised like PyTorch: weight and bias uniform in +-1/sqrt(fan_in),
    fan_in = in_channels * kh * kw, drawn from `generator` (or pyengine's
    default generator, see pyengine.manual_seed).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, generator=None):
        super().__init__()
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: groups={groups} must be positive and divide in_channels={in_channels} "
                             f"and out_channels={out_channels}")
        rng = generator or default_generator()
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        fan_in = in_channels // groups * kh * kw
        bound = 1.0 / math.sqrt(fan_in) if fan_in else 0.0
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, (kh, kw)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, int(groups)
        weight_shape = (out_channels, in_channels // groups, kh, kw)
        self.weight = Parameter(rng.uniform(-bound, bound, weight_shape).astype(np.float32))
        self.bias = Parameter(rng.uniform(-bound, bound, (out_channels,)).astype(np.float32)) if bias else None

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        """As torch prints it: sizes as pairs, padding and dilation only where not the default."""
        stride, padding, dilation = _pair(self.stride), _pair(self.padding), _pair(self.dilation)
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={stride}"
        if padding != (0, 0):
            text += f", padding={padding}"
        if dilation != (1, 1):
            text += f", dilation={dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        return text


def _pair(value) -> tuple:
    """An int or an (h, w) pair as a tuple of two ints."""
    return (int(value), int(value)) if isinstance(value, (int, np.integer)) else tuple(int(v) for v in value)


class LayerNorm(Module):
    """Layer norm over the last axis with a learned scale (ones) and shift (zeros)."""

    def __init__(self, normalized_shape: int, eps: float = 1e-5):
        super().__init__()
        self.normalized_shape, self.eps = int(normalized_shape), float(eps)
        self.weight = Parameter(np.ones(self.normalized_shape, np.float32))
        self.bias = Parameter(np.zeros(self.normalized_shape, np.float32))

    def forward(self, x):
        return F.layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"({self.normalized_shape},), eps={self.eps}, elementwise_affine=True, bias=True"


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)


class GELU(Module):
    """GELU as torch.nn.GELU: exact (approximate='none', the default) or the tanh form ('tanh')."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        O.gelu_kernel(approximate)  # checked here, not at the first call
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, approximate=self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"  # as torch prints it


class Tanh(Module):
    def forward(self, x):
        return F.tanh(x)


class Sigmoid(Module):
    def forward(self, x):
        return F.sigmoid(x)


class SiLU(Module):
    def forward(self, x):
        return F.silu(x)


class Sequential(Module):
    """Applies its modules in order; they are named '0', '1', ... as in PyTorch."""

    def __init__(self, *modules: Module):
        super().__init__()
        for index, module in enumerate(modules):
            setattr(self, str(index), module)

    def __getitem__(self, index: int) -> Module:
        return list(self._modules.values())[index]

    def __len__(self) -> int:
        return len(self._modules)

    def forward(self, x):
        for module in self._modules.values():
            x = module(x)
        return x


class CrossEntropyLoss(Module):
    """Mean cross-entropy from logits (rows, classes) and integer targets (rows,)."""

    def __init__(self, ignore_index: int = -100, reduction: str = "mean"):
        super().__init__()
        F._reduction("CrossEntropyLoss", reduction, ("mean",))  # the kernel averages
        self.ignore_index, self.reduction = int(ignore_index), reduction

    def forward(self, logits, target):
        return F.cross_entropy(logits, target, self.ignore_index, reduction=self.reduction)
