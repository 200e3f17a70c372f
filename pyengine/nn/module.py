"""Module: the base class of layers and models."""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import numpy as np

from pyengine.ops import parameters_written
from pyengine.tensor import Tensor, _as_array


class Parameter(Tensor):
    """A tensor that is a trainable weight of a module (requires grad).

    It takes its data as Tensor does, without a copy or a cast: a numpy array
    must be float32, C-contiguous, in native byte order and writable (the
    optimizers update it in place); otherwise TypeError/ValueError names the
    fix (``a.astype(np.float32)``, ``np.ascontiguousarray(a)``, ``a.copy()``).
    A list or a Python number becomes float32.
    """

    def __init__(self, data, name: str | None = None):
        if not isinstance(data, (Tensor, np.ndarray)):
            try:  # a list or a number: no array to share
                data = np.asarray(data, dtype=np.float32)
            except (TypeError, ValueError) as error:
                raise TypeError(f"Parameter: cannot make float32 values of {type(data).__name__} ({error})") from None
        array = _as_array(data, "Parameter")
        if array.dtype != np.float32:
            raise TypeError(f"Parameter: must be float32, got dtype {array.dtype}; pass a.astype(np.float32)")
        super().__init__(array, requires_grad=True, name=name)
        if not self.data.flags.writeable:
            raise ValueError("Parameter: the array is read-only and optimizers update parameters in place; "
                             "pass a.copy()")

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()  # as PyTorch prints one


class Module:
    """Holds parameters and sub-modules in the order they were assigned."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}: call Module.__init__() before assigning attributes")
        if name in self._buffers:  # assigning a buffer replaces it (None included), as in PyTorch
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"{type(self).__name__}: buffer '{name}' must be a Tensor or None, "
                                f"got {type(value).__name__}")
            self._buffers[name] = value
            object.__setattr__(self, name, value)
            return
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, tensor: Tensor | None) -> None:
        """A tensor of the module's state that is not trained (batch norm's
        running statistics): in state_dict() after the module's parameters."""
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"register_buffer: '{name}' must be a Tensor or None, got {type(tensor).__name__}")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        self._buffers[name] = tensor
        object.__setattr__(self, name, tensor)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ---- traversal
    def named_modules(self, prefix: str = ""):
        """(name, module) for self and every sub-module, depth first."""
        stack = [(prefix, self)]
        while stack:
            name, module = stack.pop()
            yield name, module
            children = [(f"{name}.{child}" if name else child, m) for child, m in module._modules.items()]
            stack.extend(reversed(children))

    def named_parameters(self):
        """(dotted name, parameter) pairs, in assignment order."""
        seen = set()
        for module_name, module in self.named_modules():
            for name, param in module._parameters.items():
                if id(param) in seen:
                    continue
                seen.add(id(param))
                yield (f"{module_name}.{name}" if module_name else name), param

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self):
        """(dotted name, buffer) pairs of every module's buffers that are not None."""
        for module_name, module in self.named_modules():
            for name, buffer in module._buffers.items():
                if buffer is not None:
                    yield (f"{module_name}.{name}" if module_name else name), buffer

    def buffers(self):
        return [b for _, b in self.named_buffers()]

    def modules(self):
        return [m for _, m in self.named_modules()]

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.zero_grad()

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    # ---- modes
    def train(self, mode: bool = True) -> Module:
        for module in self.modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    # ---- state
    def state_dict(self) -> OrderedDict:
        """Parameter and buffer arrays by dotted name (the arrays themselves, not
        copies), in PyTorch's order: each module's parameters, then its buffers."""
        return OrderedDict((name, t.data) for name, t in self._state_tensors())

    def _state_tensors(self) -> list:
        seen, items = set(), []
        for module_name, module in self.named_modules():
            prefix = f"{module_name}." if module_name else ""
            for name, tensor in [*module._parameters.items(), *module._buffers.items()]:
                if tensor is None or id(tensor) in seen:
                    continue
                seen.add(id(tensor))
                items.append((prefix + name, tensor))
        return items

    def load_state_dict(self, state: dict, strict: bool = True) -> IncompatibleKeys:
        """Copy arrays (numpy or Tensors) into the parameters, in place (captured graphs stay valid).

        Every key is checked before anything is copied: with strict, missing or
        unexpected keys raise KeyError naming them; a value of the wrong shape
        raises ValueError and one that is not a numeric array TypeError, naming
        the key. Returns (missing_keys, unexpected_keys) as PyTorch does.
        Loading is a copy by definition, so any layout and byte order is read
        right; values are converted as torch's ``copy_`` converts them (float64
        into a float32 parameter), never a float into an integer buffer.
        """
        params = dict(self._state_tensors())
        missing = [k for k in params if k not in state]
        unexpected = [k for k in state if k not in params]
        if strict and (missing or unexpected):
            raise KeyError(f"{type(self).__name__}.load_state_dict: {_key_report(missing, unexpected)}")
        arrays = {name: _state_array(state[name], name, type(self).__name__) for name in params if name in state}
        wrong = [f"'{name}' has shape {array.shape}, expected {params[name].shape}"
                 for name, array in arrays.items() if array.shape != params[name].shape]
        if wrong:
            raise ValueError(f"{type(self).__name__}.load_state_dict: {'; '.join(wrong)}")
        for name, array in arrays.items():
            np.copyto(params[name].data, array, casting="same_kind")
        parameters_written()
        return IncompatibleKeys(missing, unexpected)

    def extra_repr(self) -> str:
        """The layer's own settings, shown inside its repr (layers override it, as in PyTorch)."""
        return ""

    def __repr__(self) -> str:
        """PyTorch's layout: one line for a leaf layer, one indented "(name): ..." line per child."""
        extra = self.extra_repr()
        extra_lines = extra.split("\n") if extra else []
        child_lines = [f"({name}): {_indent(repr(module), 2)}" for name, module in self._modules.items()]
        text = type(self).__name__ + "("
        if len(extra_lines) == 1 and not child_lines:
            text += extra_lines[0]
        elif extra_lines or child_lines:
            text += "\n  " + "\n  ".join(extra_lines + child_lines) + "\n"
        return text + ")"


class IncompatibleKeys(NamedTuple):
    """What load_state_dict(strict=False) left out, as torch's _IncompatibleKeys."""

    missing_keys: list
    unexpected_keys: list


def _key_report(missing: list, unexpected: list) -> str:
    parts = ([f"missing keys {missing}"] if missing else []) + ([f"unexpected keys {unexpected}"] if unexpected else [])
    return ", ".join(parts)


def _state_array(value, name: str, owner: str) -> np.ndarray:
    """A state-dict value as a numeric numpy array (Tensors unwrapped)."""
    array = np.asarray(value.data if isinstance(value, Tensor) else value)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{owner}.load_state_dict: '{name}' is a {type(value).__name__} of dtype {array.dtype}, "
                        f"not a numeric array")
    return array


def _indent(text: str, spaces: int) -> str:
    """Indent every line but the first (blank lines stay empty), as torch's _addindent."""
    first, *rest = text.split("\n")
    return "\n".join([first] + [" " * spaces + line if line.strip() else "" for line in rest])
