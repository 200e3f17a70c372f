"""Fused attention ops: the declared kernel pairs ``attention`` ((B, H, T, D)
q, k, v with an optional additive mask) and ``qkv_attention`` (a fused QKV
projection (B, T, 3, H, D) in, (B, T, H, D) out), as autograd Ops.

The forward keeps only the output and each row's log-sum-exp; the backward
recomputes the probabilities tile by tile from them. The optional inputs
(the mask, the dropout's ``rng`` pair) are given or absent per Op, so a Tensor
list holds only the arrays there are.
"""

from __future__ import annotations

from pyengine import _C
from pyengine import ops as O

__all__ = ["Attention", "QKVAttention"]


class _OptionalInputs(O.KernelOp):
    """A KernelOp whose optional inputs are present or absent per instance:
    the Tensors given are the required inputs then the present optional
    ones, and every kernel call gets None in the absent slots."""

    def __init__(self, base: str, present: dict, **options):
        super().__init__(base, **options)
        names = self.pair.inputs
        self._slots = [i for i, name in enumerate(names) if present.get(name, True)]
        self._count = len(names)

    def _expand(self, values: list) -> list:
        full = [None] * self._count
        for slot, value in zip(self._slots, values):
            full[slot] = value
        return full

    def infer(self, *inputs: O.Spec) -> list:
        if len(inputs) != len(self._slots):
            raise TypeError(f"{self.name}: takes {len(self._slots)} inputs, got {len(inputs)}")
        names = [self.pair.inputs[slot] for slot in self._slots]
        for name, spec in zip(names, inputs):
            if name in self.pair.float_inputs and spec.dtype != O.F32:
                raise TypeError(f"{self.name}: '{name}' must be float32, got {spec.dtype} with shape {spec.shape}")
        shapes = {name: spec.shape for name, spec in zip(names, inputs)}
        expected = _C.infer_shapes(self.pair.forward.name, shapes, self.options)
        return [O.Spec(tuple(expected[name])) for name in self.pair.outputs]

    def forward(self, outs, ins):
        super().forward(outs, self._expand(ins))

    def bind_forward(self, outs, ins):
        return super().bind_forward(outs, self._expand(ins))

    def backward(self, grad_ins, grad_out, ins, outs):
        super().backward(self._expand(grad_ins), grad_out, self._expand(ins), outs)

    def saved(self, ins, outs):
        return [value for value in super().saved(self._expand(ins), outs) if value is not None]


class Attention(_OptionalInputs):
    """softmax(scale q k^T + mask) v over (B, H, T, D) q, k, v; inputs q, k, v,
    then the mask (additive float32, broadcast to (B, H, Tq, Tk)) and the rng
    pair when given."""

    def __init__(self, *, is_causal: bool, scale: float, dropout_p: float, has_mask: bool, has_rng: bool):
        super().__init__("attention", {"mask": has_mask, "rng": has_rng}, is_causal=bool(is_causal),
                         scale=float(scale), dropout_p=float(dropout_p))
        self.name = "scaled_dot_product_attention"

    def label(self):
        flags = [f for f, on in (("causal", self.options["is_causal"]),
                                 (f"dropout={self.options['dropout_p']:g}", self.options["dropout_p"] > 0)) if on]
        return f"attention{('[' + ', '.join(flags) + ']') if flags else ''}"


class QKVAttention(_OptionalInputs):
    """Attention over a fused QKV projection (B, T, 3, H, D), output (B, T, H, D);
    inputs qkv, then the mask (additive float32, broadcast to (B, H, T, T)) and the rng pair when given."""

    def __init__(self, *, is_causal: bool, scale: float, dropout_p: float, has_rng: bool, has_mask: bool = False):
        super().__init__("qkv_attention", {"mask": has_mask, "rng": has_rng}, is_causal=bool(is_causal),
                         scale=float(scale), dropout_p=float(dropout_p))
        self.name = "qkv_attention"
