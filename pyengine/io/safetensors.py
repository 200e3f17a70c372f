"""Save and load parameters as safetensors files (crash-safe writes, verified reads: see safe_file.py)."""

from __future__ import annotations

import os

import numpy as np

from pyengine.io import safe_file
from pyengine.nn.module import Module


def save(state, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Write a Module's parameters (or a name -> array dict) to `path`."""
    if isinstance(state, Module):
        state = state.state_dict()
    arrays = {name: np.asarray(array) for name, array in state.items()}
    safe_file.write(arrays, {k: str(v) for k, v in (metadata or {}).items()}, os.fspath(path))


def load(path: str | os.PathLike) -> dict:
    """Read a safetensors file into a name -> numpy array dict (checked: see safe_file.read)."""
    arrays, _ = safe_file.read(os.fspath(path), "pyengine.io.load")
    return arrays


def load_into(module: Module, path: str | os.PathLike, strict: bool = True) -> Module:
    """Copy the arrays of a safetensors file into `module`'s parameters."""
    module.load_state_dict(load(path), strict=strict)
    return module
