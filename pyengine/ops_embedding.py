"""The embedding lookup as a differentiable op (kernels: csrc/embedding/)."""

from __future__ import annotations

import numpy as np

from pyengine import ops as O

__all__ = ["Embedding"]

INDEX_DTYPES = (np.dtype(np.int64), np.dtype(np.int32))


class Embedding(O.KernelOp):
    """out (*, dim) = weight (vocab, dim)[idx (*)]; the gradient scatter-adds
    into weight's. Inputs: (weight, idx); idx int64 or int32, every index in
    [0, vocab) (the kernel checks them before it reads a row)."""

    def __init__(self):
        super().__init__("embedding")

    def infer(self, weight, idx):
        if idx.dtype not in INDEX_DTYPES:
            raise TypeError(f"embedding: indices must be int64 or int32, got {idx.dtype} with shape {idx.shape}")
        return super().infer(weight, idx)

    def backward(self, grad_ins, grad_out, ins, outs):
        if len(grad_ins) > 1 and grad_ins[1] is not None:
            raise ValueError("embedding: integer indices have no gradient")
        super().backward(grad_ins, grad_out, ins, outs)
