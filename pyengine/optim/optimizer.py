"""Base class of optimizers, with PyTorch's param_groups, defaults, state and state_dict."""

from __future__ import annotations

import numpy as np

from pyengine.tensor import Tensor


class ParamState:
    """Per-parameter state dicts keyed by the parameter object, like torch's ``optimizer.state``.

    Keys are compared by identity (a Tensor need not be hashable), and
    ``state[param]`` creates an empty dict on first use (torch's defaultdict).
    """

    def __init__(self):
        self._entries: dict = {}  # id(param) -> (param, state dict)

    def __getitem__(self, param) -> dict:
        entry = self._entries.get(id(param))
        if entry is None:
            entry = self._entries[id(param)] = (param, {})
        return entry[1]

    def __setitem__(self, param, state: dict) -> None:
        self._entries[id(param)] = (param, state)

    def get(self, param, default=None):
        entry = self._entries.get(id(param))
        return default if entry is None else entry[1]

    def __contains__(self, param) -> bool:
        return id(param) in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self):
        return (param for param, _ in self._entries.values())

    def items(self):
        return list(self._entries.values())

    def clear(self) -> None:
        self._entries.clear()


class Optimizer:
    """Updates parameters from their ``.grad``, one group of hyper-parameters per param group.

    ``params`` is an iterable of Parameters or of dicts ``{"params": [...], "lr": ...}``
    (per-group options; what a group leaves out comes from ``defaults``), as in
    PyTorch. Subclasses read their hyper-parameters from ``self.param_groups``
    at every step, so a learning-rate scheduler that changes ``group["lr"]``
    takes effect at the next step.
    """

    def __init__(self, params, defaults: dict | None = None):
        self.defaults = dict(defaults or {})
        self.param_groups: list = []
        self.state = ParamState()
        self.steps = 0
        groups = _as_groups(params, type(self).__name__)
        for group in groups:
            self.add_param_group(group)

    # ---- parameters and groups
    @property
    def params(self) -> list:
        """Every parameter of every group, in order (the flat list torch calls param indices)."""
        return [p for group in self.param_groups for p in group["params"]]

    @property
    def lr(self) -> float:
        """The first group's learning rate (setting it sets every group's)."""
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        for group in self.param_groups:
            group["lr"] = value

    def add_param_group(self, param_group: dict) -> None:
        """Append a group; the options it does not set are taken from ``defaults``."""
        name = type(self).__name__
        if not isinstance(param_group, dict):
            raise TypeError(f"{name}: a param group must be a dict, got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError(f"{name}: a param group needs a 'params' entry")
        group = dict(param_group)
        group["params"] = _param_list(group["params"], name)
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        seen = {id(p) for p in self.params}
        if any(id(p) in seen for p in group["params"]):
            raise ValueError(f"{name}: some parameters appear in more than one parameter group")
        self._check_group(group)
        self.param_groups.append(group)

    def _check_group(self, group: dict) -> None:
        """Validate (and normalise) a group's hyper-parameters; subclasses override."""

    # ---- gradients and steps
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every gradient: drop it (default) or fill it with zeros in place."""
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p._grad is not None:
                p._grad.fill(0)

    def step(self) -> None:
        raise NotImplementedError

    # ---- state
    def state_dict(self) -> dict:
        """PyTorch's layout: {"state": {index: {...}}, "param_groups": [{..., "params": [indices]}]}.

        Indices count the parameters across groups in order; the state arrays
        are the optimizer's own (not copies), like Module.state_dict.
        """
        index_of = {id(p): i for i, p in enumerate(self.params)}
        state = {index_of[id(p)]: dict(s) for p, s in self.state.items() if s and id(p) in index_of}
        groups = [{**{k: v for k, v in g.items() if k != "params"},
                   "params": [index_of[id(p)] for p in g["params"]]} for g in self.param_groups]
        return {"state": dict(sorted(state.items())), "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyper-parameters and state saved by state_dict() (arrays are copied)."""
        name = type(self).__name__
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError(f"{name}.load_state_dict: expected a dict with 'state' and 'param_groups'")
        saved_groups = list(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{name}.load_state_dict: {len(saved_groups)} param groups saved, "
                             f"the optimizer has {len(self.param_groups)}")
        for index, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"{name}.load_state_dict: param group {index} has {len(saved['params'])} "
                                 f"parameters saved, the optimizer's has {len(group['params'])}")
        params = self.params
        new_state = {}
        for key, saved in state_dict["state"].items():
            index = _param_index(key, len(params), name)
            new_state[index] = _copy_param_state(saved, params[index], index, name)
        for group, saved in zip(self.param_groups, saved_groups):
            options = {k: v for k, v in saved.items() if k != "params"}
            current = group["params"]
            group.clear()
            group.update(options, params=current)
        self.state.clear()
        for index, entry in new_state.items():
            self.state[params[index]] = entry


def _as_groups(params, name: str) -> list:
    """The constructor's `params` as a list of group dicts."""
    if isinstance(params, (Tensor, dict)):
        params = [params]
    items = list(params)
    if not items:
        raise ValueError(f"{name}: got an empty parameter list")
    if all(isinstance(item, dict) for item in items):
        return items
    if any(isinstance(item, dict) for item in items):
        raise TypeError(f"{name}: params must be all Parameters or all dicts, not a mix")
    return [{"params": items}]


def _param_list(params, name: str) -> list:
    if isinstance(params, Tensor):
        return [params]
    if isinstance(params, (set, frozenset)):
        raise TypeError(f"{name}: parameters must be an ordered collection, not a set")
    params = list(params)
    for p in params:
        if not isinstance(p, Tensor):
            raise TypeError(f"{name}: can only optimize Tensors, got {type(p).__name__}")
        if not p.is_leaf:
            raise ValueError(f"{name}: can't optimize a non-leaf Tensor")
        if p.dtype != np.float32:  # the update kernels are float32 and write in place: refused here, not at step()
            raise TypeError(f"{name}: can only optimize float32 Tensors, got {p.dtype}")
        if not p.data.flags.writeable:
            raise ValueError(f"{name}: a parameter of shape {p.shape} is read-only (its array is not writable), "
                             f"and optimizers update in place; give it a writable copy (a.copy())")
    return params


def _param_index(key, count: int, name: str) -> int:
    try:
        index = int(key)
    except (TypeError, ValueError):
        raise ValueError(f"{name}.load_state_dict: state key {key!r} is not a parameter index") from None
    if not 0 <= index < count:
        raise ValueError(f"{name}.load_state_dict: state key {index} is out of range for {count} parameters")
    return index


def _copy_param_state(saved: dict, param, index: int, name: str) -> dict:
    """One parameter's saved state: arrays (numpy or Tensor) copied to float32 of its shape."""
    entry = {}
    for key, value in saved.items():
        array = value.data if isinstance(value, Tensor) else value
        if isinstance(array, np.ndarray):
            if array.shape != param.shape:
                raise ValueError(f"{name}.load_state_dict: state[{index}][{key!r}] has shape {array.shape}, "
                                 f"the parameter has {param.shape}")
            value = np.array(array, dtype=np.float32, order="C")
        entry[key] = value
    return entry
