"""RMSNorm (torch.nn.RMSNorm), T5's layer norm."""

from __future__ import annotations

import numpy as np

from pyengine import functional as F
from pyengine.nn.module import Module, Parameter


class RMSNorm(Module):
    """RMS norm over the last axis: x * rsqrt(mean(x^2) + eps) * weight, the weight starting at ones;
    eps None is float32's machine epsilon, as torch."""

    def __init__(self, normalized_shape, eps: float | None = None, elementwise_affine: bool = True):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) else tuple(normalized_shape)
        if len(shape) != 1:
            raise ValueError(f"RMSNorm: one normalized dimension is supported, got {shape}")
        self.normalized_shape, self.eps = (int(shape[0]),), eps
        self.weight = Parameter(np.ones(self.normalized_shape, np.float32)) if elementwise_affine else None

    def forward(self, x):
        return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.weight is not None}"
