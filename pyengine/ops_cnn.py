"""The ops of convolutional networks beyond the convolution: pooling and batch norm.

- ``MaxPool2d``, ``AvgPool2d``, ``AdaptiveAvgPool2d``: declared kernel pairs
  (csrc/pool/); max pooling's second output is the argmax its backward reads.
- ``BatchNorm``: batch norm over N and the spatial dims (csrc/batchnorm/).
  The running statistics are buffers of the module, held by the op (they
  are not graph values): the forward kernel updates them in place, so a
  replayed training step updates them exactly as eager mode does. While a
  graph is being captured, the forward that records the op works on copies
  of them, so capturing a step does not count as a step.
- ``fold_batch_norm``: an eval-mode batch norm after a convolution folded
  into its weight and bias (the executor's folding, nn.utils.fuse_conv_bn_eval).
"""

from __future__ import annotations

import functools

import numpy as np

from pyengine import _C
from pyengine import ops as O

__all__ = ["MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "BatchNorm", "ConvBatchNorm", "fold_batch_norm", "pair"]


def pair(value, name: str, fn: str) -> tuple:
    """An int or an (h, w) pair of ints as a tuple of two ints; TypeError otherwise."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        return int(value[0]), int(value[1])
    raise TypeError(f"{fn}: {name} must be an int or a pair of ints, got {value!r}")


class MaxPool2d(O.KernelOp):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        kernel = pair(kernel_size, "kernel_size", "max_pool2d")
        stride = kernel if stride is None else pair(stride, "stride", "max_pool2d")
        super().__init__("max_pool2d", kernel_size=kernel, stride=stride,
                         padding=pair(padding, "padding", "max_pool2d"),
                         dilation=pair(dilation, "dilation", "max_pool2d"), ceil_mode=bool(ceil_mode))

    def label(self):
        return f"max_pool2d(kernel={self.options['kernel_size']}, stride={self.options['stride']})"


class AvgPool2d(O.KernelOp):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        kernel = pair(kernel_size, "kernel_size", "avg_pool2d")
        stride = kernel if stride is None else pair(stride, "stride", "avg_pool2d")
        if divisor_override is not None and (not isinstance(divisor_override, int) or divisor_override <= 0):
            raise ValueError(f"avg_pool2d: divisor_override must be a positive int or None, got {divisor_override!r}")
        super().__init__("avg_pool2d", kernel_size=kernel, stride=stride,
                         padding=pair(padding, "padding", "avg_pool2d"), ceil_mode=bool(ceil_mode),
                         count_include_pad=bool(count_include_pad), divisor_override=int(divisor_override or 0))

    def label(self):
        return f"avg_pool2d(kernel={self.options['kernel_size']}, stride={self.options['stride']})"


class AdaptiveAvgPool2d(O.KernelOp):
    def __init__(self, output_size):
        super().__init__("adaptive_avg_pool2d", output_size=pair(output_size, "output_size", "adaptive_avg_pool2d"))

    def label(self):
        return f"adaptive_avg_pool2d{self.options['output_size']}"


class BatchNorm(O.Op):
    """Batch norm of x (N, C, ...) per channel. Inputs: x, then weight when
    `has_weight`, then bias when `has_bias`. Outputs: y, and the mean and 1/std used (for the
    backward). `batch_stats`: normalise with the batch's statistics (and
    update `running_mean` / `running_var` when given); else with those.
    `num_batches_tracked` (a 0-d int64 array or None) counts the updates;
    momentum None is PyTorch's cumulative average, 1 / that count."""

    name = "batch_norm"

    def __init__(self, running_mean, running_var, num_batches_tracked, batch_stats: bool, momentum, eps: float,
                 has_weight: bool, has_bias: bool):
        self.running_mean, self.running_var = running_mean, running_var
        self.num_batches_tracked = num_batches_tracked
        self.batch_stats, self.momentum, self.eps = bool(batch_stats), momentum, float(eps)
        self.has_weight, self.has_bias = bool(has_weight), bool(has_bias)
        self.affine_names = ("weight",) * self.has_weight + ("bias",) * self.has_bias
        self.updates = self.batch_stats and running_mean is not None

    def infer(self, x, *affine):
        O._check_float(self.name, x, *affine)
        if len(x.shape) < 2:
            raise ValueError(f"batch_norm: x must be (N, C, ...), got shape {x.shape}")
        if len(affine) != len(self.affine_names):
            raise TypeError(f"batch_norm: takes {', '.join(('x',) + self.affine_names)}, got {1 + len(affine)} inputs")
        channels = x.shape[1]
        for name, spec in zip(self.affine_names, affine):
            if spec.shape != (channels,):
                raise ValueError(f"batch_norm: {name} has shape {spec.shape}, expected ({channels},) for x {x.shape}")
        for name in ("running_mean", "running_var"):
            buffer = getattr(self, name)
            if buffer is not None and buffer.shape != (channels,):
                raise ValueError(f"batch_norm: {name} has shape {buffer.shape}, expected ({channels},) for x {x.shape}")
        return [O.Spec(tuple(x.shape)), O.Spec((channels,)), O.Spec((channels,))]

    def _momentum(self) -> float:
        if self.num_batches_tracked is not None and self.updates:
            self.num_batches_tracked += 1
        if self.momentum is None:  # the cumulative moving average
            return 1.0 / float(self.num_batches_tracked) if self.updates else 0.0
        return float(self.momentum)

    def _run(self, outs, ins, running_mean, running_var):
        if self.updates:
            O.parameters_written()
        weight, bias = self._affine(ins)
        _C.batch_norm_forward(outs[0], outs[1], outs[2], running_mean, running_var, ins[0], weight, bias,
                              self.batch_stats, self._momentum(), self.eps)

    def forward(self, outs, ins):
        from pyengine.tensor import _state

        if _state.capturing and self.updates:  # recording the step is not a step: leave the buffers
            counter = self.num_batches_tracked
            self.num_batches_tracked = None if counter is None else counter.copy()
            try:
                self._run(outs, ins, self.running_mean.copy(), self.running_var.copy())
            finally:
                self.num_batches_tracked = counter
            return
        self._run(outs, ins, self.running_mean, self.running_var)

    def bind_forward(self, outs, ins):
        return functools.partial(self._run, outs, ins, self.running_mean, self.running_var)

    def _affine(self, values) -> tuple:
        """(weight, bias) among values[1:], None where absent."""
        weight = values[1] if self.has_weight else None
        bias = values[1 + self.has_weight] if self.has_bias else None
        return weight, bias

    def backward(self, grad_ins, grad_out, ins, outs):
        grad_ins = list(grad_ins) + [None] * (1 + len(self.affine_names) - len(grad_ins))
        grad_weight, grad_bias = self._affine(grad_ins)
        _C.batch_norm_backward(grad_ins[0], grad_weight, grad_bias, grad_out, ins[0], self._affine(ins)[0], outs[1],
                               outs[2], training=self.batch_stats)

    def saved(self, ins, outs):
        return [ins[0], *ins[1:1 + self.has_weight], outs[1], outs[2]]

    def label(self):
        return f"batch_norm({'batch' if self.batch_stats else 'running'} stats)"


def fold_batch_norm(weight, bias, running_mean, running_var, gamma, beta, eps: float, out_weight=None,
                    out_bias=None) -> tuple:
    """The convolution that gives batch_norm(conv(x, weight, bias)) with the running statistics:
    weight' = weight * s[k] and bias' = (bias - mean) * s + beta per output channel k, with
    s = gamma / sqrt(var + eps) (bias 0, gamma 1, beta 0 when None), in float64 rounded once
    to float32; into out_weight and out_bias when given. Returns (weight', bias')."""
    f64 = np.float64
    scale = 1.0 / np.sqrt(np.asarray(running_var, f64) + float(eps))
    if gamma is not None:
        scale = scale * np.asarray(gamma, f64)
    folded_bias = -np.asarray(running_mean, f64) if bias is None else np.asarray(bias, f64) - running_mean
    folded_bias = folded_bias * scale + (0.0 if beta is None else np.asarray(beta, f64))
    folded_weight = np.asarray(weight, f64) * scale.reshape(-1, *(1,) * (np.ndim(weight) - 1))
    out_weight = np.empty(np.shape(weight), np.float32) if out_weight is None else out_weight
    out_bias = np.empty(np.shape(running_mean), np.float32) if out_bias is None else out_bias
    np.copyto(out_weight, folded_weight, casting="same_kind")
    np.copyto(out_bias, folded_bias, casting="same_kind")
    return out_weight, out_bias


class ConvBatchNorm(O.Conv2d):
    """A convolution with an eval-mode batch norm folded into its weight and
    bias (the executor's folding: its inputs are x and the folded weight and bias)."""

    def __init__(self, conv: O.Conv2d):
        super().__init__(conv.stride, conv.padding, conv.dilation, conv.groups)
        self.name = "conv2d+batch_norm"

    def label(self):
        return f"{super().label()}+batch_norm"
