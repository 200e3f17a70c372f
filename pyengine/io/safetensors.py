"""Save and load parameters as safetensors files, through the `safetensors` package."""

from __future__ import annotations

import os

import numpy as np
from safetensors.numpy import load_file, save_file

from pyengine.nn.module import Module


def save(state, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Write a Module's parameters (or a name -> array dict) to `path`."""
    if isinstance(state, Module):
        state = state.state_dict()
    arrays = {name: np.ascontiguousarray(array) for name, array in state.items()}
    directory = os.path.dirname(os.fspath(path))
    if directory:
        os.makedirs(directory, exist_ok=True)
    save_file(arrays, os.fspath(path), metadata={k: str(v) for k, v in (metadata or {}).items()})


def load(path: str | os.PathLike) -> dict:
    """Read a safetensors file into a name -> numpy array dict."""
    return load_file(os.fspath(path))


def load_into(module: Module, path: str | os.PathLike, strict: bool = True) -> Module:
    """Copy the arrays of a safetensors file into `module`'s parameters."""
    module.load_state_dict(load(path), strict=strict)
    return module
