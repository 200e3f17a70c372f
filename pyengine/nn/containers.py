"""ModuleList and ModuleDict: sub-modules held in a list or a dict, registered as in PyTorch.

The modules they hold are children of the container, so ``parameters()``,
``state_dict()`` ("layers.0.weight", "heads.cls.bias"), ``train()``/``eval()``
and ``repr()`` see them. Neither defines forward(): index them in the forward
of the model that holds them.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping

from pyengine.nn.module import Module, _indent


def _check_module(module, owner: str) -> Module:
    if not isinstance(module, Module):
        raise TypeError(f"{owner}: expected a Module, got {type(module).__name__}")
    return module


class ModuleList(Module):
    """A list of modules named '0', '1', ... (indexing, slicing, len, iteration, append,
    extend, insert, pop, +, +=), as torch.nn.ModuleList."""

    def __init__(self, modules: Iterable[Module] | None = None):
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def _absolute_index(self, index) -> int:
        index = operator.index(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"ModuleList: index {index} is out of range for {len(self)} modules")
        return index + len(self) if index < 0 else index

    def _renumber(self, modules: list) -> None:
        """Hold exactly `modules`, named '0', '1', ... in order."""
        self._modules.clear()
        self._modules.update((str(i), m) for i, m in enumerate(modules))

    def __getitem__(self, index):
        if isinstance(index, slice):
            return type(self)(list(self._modules.values())[index])
        return self._modules[str(self._absolute_index(index))]

    def __setitem__(self, index: int, module: Module) -> None:
        self._modules[str(self._absolute_index(index))] = _check_module(module, "ModuleList")

    def __delitem__(self, index) -> None:
        modules = list(self._modules.values())
        if isinstance(index, slice):
            del modules[index]
        else:
            del modules[self._absolute_index(index)]
        self._renumber(modules)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __iadd__(self, modules: Iterable[Module]) -> ModuleList:
        return self.extend(modules)

    def __add__(self, other: Iterable[Module]) -> ModuleList:
        return ModuleList([*self, *other])

    def append(self, module: Module) -> ModuleList:
        self._modules[str(len(self))] = _check_module(module, "ModuleList.append")
        return self

    def extend(self, modules: Iterable[Module]) -> ModuleList:
        if not isinstance(modules, Iterable):
            raise TypeError(f"ModuleList.extend: expected an iterable of Modules, got {type(modules).__name__}")
        for module in list(modules):
            self.append(module)
        return self

    def insert(self, index: int, module: Module) -> None:
        """Insert `module` before position `index` (Python list semantics)."""
        modules = list(self._modules.values())
        modules.insert(operator.index(index), _check_module(module, "ModuleList.insert"))
        self._renumber(modules)

    def pop(self, index: int = -1) -> Module:
        module = self[index]
        del self[index]
        return module

    def __repr__(self) -> str:
        """As torch: runs of identical children are shown once, as "(first-last): n x ..."."""
        if not len(self):
            return "ModuleList()"
        runs = []  # [first index, last index, repr]
        for index, module in enumerate(self):
            text = repr(module)
            if runs and runs[-1][2] == text:
                runs[-1][1] = index
            else:
                runs.append([index, index, text])
        lines = [_indent(_run_line(first, last, text), 2) for first, last, text in runs]
        return "ModuleList(\n  " + "\n  ".join(lines) + "\n)"


def _run_line(first: int, last: int, text: str) -> str:
    return f"({first}): {text}" if first == last else f"({first}-{last}): {last - first + 1} x {text}"


class ModuleDict(Module):
    """An ordered dict of modules by name (keys, values, items, update, pop, in, len,
    iteration over keys), as torch.nn.ModuleDict."""

    def __init__(self, modules: Mapping[str, Module] | Iterable | None = None):
        super().__init__()
        if modules is not None:
            self.update(modules)

    def __getitem__(self, key: str) -> Module:
        return self._modules[key]

    def __setitem__(self, key: str, module: Module) -> None:
        if not isinstance(key, str):
            raise TypeError(f"ModuleDict: keys must be strings, got {type(key).__name__}")
        if not key or "." in key:
            raise ValueError(f"ModuleDict: key {key!r} must be a non-empty name without '.'")
        self._modules[key] = _check_module(module, f"ModuleDict[{key!r}]")

    def __delitem__(self, key: str) -> None:
        del self._modules[key]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def __contains__(self, key) -> bool:
        return key in self._modules

    def keys(self):
        return self._modules.keys()

    def values(self):
        return self._modules.values()

    def items(self):
        return self._modules.items()

    def clear(self) -> None:
        self._modules.clear()

    def pop(self, key: str) -> Module:
        return self._modules.pop(key)

    def update(self, modules: Mapping[str, Module] | Iterable) -> None:
        """Add or replace modules from a mapping or from (key, module) pairs."""
        if isinstance(modules, (Mapping, ModuleDict)):
            pairs = list(modules.items())
        elif isinstance(modules, Iterable):
            pairs = [self._pair(entry, index) for index, entry in enumerate(modules)]
        else:
            raise TypeError(f"ModuleDict.update: expected a mapping or (key, module) pairs, "
                            f"got {type(modules).__name__}")
        for key, module in pairs:
            self[key] = module

    @staticmethod
    def _pair(entry, index: int) -> tuple:
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise ValueError(f"ModuleDict.update: element {index} should be a (key, module) pair")
        return tuple(entry)

