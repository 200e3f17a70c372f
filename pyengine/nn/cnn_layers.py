"""Layers of convolutional networks: pooling, batch norm, Flatten, as in torch.nn."""

from __future__ import annotations

import numpy as np

from pyengine import functional as F
from pyengine.nn.module import Module, Parameter
from pyengine.tensor import Tensor


class MaxPool2d(Module):
    """Max pooling over (N, C, H, W); stride defaults to kernel_size (see functional.max_pool2d)."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices: bool = False,
                 ceil_mode: bool = False):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, kernel_size if stride is None else stride
        self.padding, self.dilation = padding, dilation
        self.return_indices, self.ceil_mode = bool(return_indices), bool(ceil_mode)

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                            self.return_indices)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class AvgPool2d(Module):
    """Average pooling over (N, C, H, W) (see functional.avg_pool2d)."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False, count_include_pad: bool = True,
                 divisor_override=None):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, kernel_size if stride is None else stride
        self.padding, self.ceil_mode = padding, bool(ceil_mode)
        self.count_include_pad, self.divisor_override = bool(count_include_pad), divisor_override

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad,
                            self.divisor_override)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    """Average pooling to a fixed output size; AdaptiveAvgPool2d(1) is global pooling."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class Flatten(Module):
    """Flattens dims start_dim..end_dim into one (a view), as torch.nn.Flatten."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)

    def forward(self, x):
        return x.flatten(self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class _BatchNorm(Module):
    """Batch norm per channel, as torch.nn's: weight ones and bias zeros when
    affine (bias only with bias=True); running_mean (zeros), running_var (ones) and num_batches_tracked
    buffers when track_running_stats. In training mode it normalises with the
    batch's statistics and updates the running ones (momentum None: their
    cumulative average); in eval mode with the running ones when tracked."""

    expected_dims: tuple = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum=0.1, affine: bool = True,
                 track_running_stats: bool = True, *, bias: bool = True):
        super().__init__()
        self.num_features, self.eps, self.momentum = int(num_features), float(eps), momentum
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        self.has_bias = bool(affine and bias)
        self.weight = Parameter(np.ones(self.num_features, np.float32)) if affine else None
        self.bias = Parameter(np.zeros(self.num_features, np.float32)) if self.has_bias else None
        if track_running_stats:
            self.register_buffer("running_mean", Tensor(np.zeros(self.num_features, np.float32)))
            self.register_buffer("running_var", Tensor(np.ones(self.num_features, np.float32)))
            self.register_buffer("num_batches_tracked", Tensor(np.array(0, np.int64)))
        else:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(name, None)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.data.fill(0)
            self.running_var.data.fill(1)
            self.num_batches_tracked.data.fill(0)

    def forward(self, x):
        if x.ndim not in self.expected_dims:
            raise ValueError(f"{type(self).__name__}: expected {' or '.join(f'{d}D' for d in self.expected_dims)} "
                             f"input, got shape {x.shape}")
        batch_stats = self.training or self.running_mean is None
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, batch_stats,
                            self.momentum, self.eps,
                            num_batches_tracked=self.num_batches_tracked if self.training else None)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"bias={self.has_bias}, track_running_stats={self.track_running_stats}")


class BatchNorm2d(_BatchNorm):
    """Batch norm over (N, C, H, W)."""

    expected_dims = (4,)


class BatchNorm1d(_BatchNorm):
    """Batch norm over (N, C) or (N, C, L)."""

    expected_dims = (2, 3)
