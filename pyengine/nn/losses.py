"""Loss modules with PyTorch's names and arguments, over pyengine.functional."""

from __future__ import annotations

from pyengine import functional as F
from pyengine.nn.module import Module
from pyengine.tensor import Tensor

__all__ = ["MSELoss", "L1Loss", "BCEWithLogitsLoss", "NLLLoss"]


class _Loss(Module):
    """A loss with a `reduction` ("mean", "sum" or "none"; which ones a loss
    supports is its functional's), checked when the module is made."""

    _reductions = ("mean", "sum", "none")

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        F._reduction(type(self).__name__, reduction, self._reductions)
        self.reduction = reduction  # printed as torch does: not at all


def _optional_tensor(value):
    return value if value is None or isinstance(value, Tensor) else Tensor(value)


class MSELoss(_Loss):
    """Squared error: F.mse_loss."""

    def forward(self, input, target):
        return F.mse_loss(input, target, reduction=self.reduction)


class L1Loss(_Loss):
    """Absolute error: F.l1_loss."""

    def forward(self, input, target):
        return F.l1_loss(input, target, reduction=self.reduction)


class BCEWithLogitsLoss(_Loss):
    """Binary cross-entropy on logits: F.binary_cross_entropy_with_logits,
    with optional per-element `weight` and per-class `pos_weight`."""

    def __init__(self, weight=None, reduction: str = "mean", pos_weight=None):
        super().__init__(reduction)
        self.weight, self.pos_weight = _optional_tensor(weight), _optional_tensor(pos_weight)

    def forward(self, input, target):
        return F.binary_cross_entropy_with_logits(input, target, self.weight, reduction=self.reduction,
                                                  pos_weight=self.pos_weight)


class NLLLoss(_Loss):
    """Negative log-likelihood of log-probabilities: F.nll_loss (reduction
    "mean" only, no class weights: ValueError otherwise)."""

    _reductions = ("mean",)

    def __init__(self, weight=None, ignore_index: int = -100, reduction: str = "mean"):
        if weight is not None:
            raise ValueError("NLLLoss: class weights are not supported")
        super().__init__(reduction)
        self.ignore_index = int(ignore_index)

    def forward(self, input, target):
        return F.nll_loss(input, target, ignore_index=self.ignore_index, reduction=self.reduction)
