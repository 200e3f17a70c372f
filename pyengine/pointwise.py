"""PyTorch's top-level pointwise functions (``torch.sqrt(x)``, ``torch.clamp``,
...) over pyengine Tensors: each calls the Tensor method of the same name,
which runs the declared kernel."""

from __future__ import annotations

from pyengine.tensor import Tensor

__all__ = ["relu", "sigmoid", "tanh", "exp", "log", "sqrt", "rsqrt", "abs", "square", "clamp",
           "clip"]


def _method(name: str):
    def function(x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"{name}: expected a Tensor, got {type(x).__name__}")
        return getattr(x, name)()

    function.__name__ = name
    function.__doc__ = f"x.{name}(), as torch.{name}."
    return function


relu, sigmoid, tanh, exp, log, sqrt, rsqrt, abs, square = (  # noqa: A001 - PyTorch's names
    _method(n) for n in ("relu", "sigmoid", "tanh", "exp", "log", "sqrt", "rsqrt", "abs", "square"))


def clamp(x: Tensor, min=None, max=None) -> Tensor:  # noqa: A002 - PyTorch's names
    """x limited to [min, max], as torch.clamp."""
    if not isinstance(x, Tensor):
        raise TypeError(f"clamp: expected a Tensor, got {type(x).__name__}")
    return x.clamp(min, max)


clip = clamp
