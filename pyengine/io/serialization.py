"""pyengine.save / pyengine.load: a (nested) state dict as one safetensors file.

The file is a plain safetensors file. Every tensor leaf is stored under its
dotted path ("model.0.weight", "optim.state.0.momentum_buffer"), so a flat
model state_dict saved here loads with ``safetensors.torch.load_file`` under
the same names. The nesting (dicts with str or int keys, lists, tuples) and
the non-tensor leaves (None, bool, int, float, str and lists of them) are
kept as JSON in the file's metadata, under the key "pyengine.structure".

Writes are crash-safe and reads verified (pyengine/io/safe_file.py): the
bytes go to a temporary file in the same folder, which is flushed, fsynced
and renamed over `path`, so a crash leaves either the old file or the new
one, never a partial file; a SHA-256 in the metadata lets load() refuse a
truncated or corrupted file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np

from pyengine.io import safe_file
from pyengine.tensor import Tensor

STRUCTURE_KEY = "pyengine.structure"
FORMAT_KEY = "pyengine.format"
FORMAT_VERSION = "1"

_SCALARS = (type(None), bool, int, float, str)
_DTYPE_KINDS = "biuf"  # bool, signed and unsigned integers, floats: what safetensors stores


def save(obj: Mapping, path: str | os.PathLike) -> None:
    """Write the state dict `obj` to `path` as one safetensors file, atomically.

    Leaves may be pyengine Tensors, numpy arrays (bool, integer or float),
    numpy scalars (stored as Python scalars) and JSON values. Missing parent
    folders are created. Unsupported leaves raise TypeError naming their key.
    """
    if not isinstance(obj, Mapping):
        hint = " (save module.state_dict())" if hasattr(obj, "state_dict") else ""
        raise TypeError(f"pyengine.save: expected a dict, got {type(obj).__name__}{hint}")
    arrays: dict = {}
    structure = _encode(obj, "", arrays)
    metadata = {FORMAT_KEY: FORMAT_VERSION, STRUCTURE_KEY: json.dumps(structure)}
    safe_file.write(arrays, metadata, os.fspath(path))


def load(path: str | os.PathLike):
    """Read a file written by save() (or any safetensors file) back.

    Returns the saved structure with every stored array as a pyengine Tensor
    (numpy arrays saved as such come back as Tensors too; tuples stay tuples,
    dict keys keep their int or str type). A safetensors file written by
    another program comes back as a flat {name: Tensor} dict.
    Raises FileNotFoundError for a missing file, ValueError for one that is
    not an intact safetensors or pyengine file (truncated, a checksum that
    does not match, a structure naming tensors the file lacks or missing
    some it holds) and TypeError for a dtype numpy lacks (bfloat16), each one
    line naming the path.
    """
    path = os.fspath(path)
    arrays, metadata = safe_file.read(path, "pyengine.load")
    tensors = {name: Tensor(_writable(array)) for name, array in arrays.items()}
    if STRUCTURE_KEY not in metadata:
        return tensors
    try:
        used: set = set()
        result = _decode(json.loads(metadata[STRUCTURE_KEY]), tensors, used)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
        raise ValueError(f"pyengine.load: {path} has a corrupt structure ({_one_line(error)})") from None
    if used != set(tensors):
        raise ValueError(f"pyengine.load: {path} has a corrupt structure (tensors "
                         f"{sorted(set(tensors) - used)} are not in it)")
    return result


# ---------------------------------------------------------------- encoding
def _encode(value, key: str, arrays: dict):
    """The JSON node for `value` at dotted path `key`; its arrays go into `arrays`."""
    if isinstance(value, (Tensor, np.ndarray)):
        return {"tensor": _add_array(value, key, arrays)}
    if isinstance(value, Mapping):
        return {"dict": [[k, _encode(v, _join(key, _check_key(k, key)), arrays)] for k, v in value.items()]}
    if isinstance(value, list) and all(_is_json_scalar(item) for item in value):
        return {"value": [_json_scalar(item) for item in value]}
    if isinstance(value, (list, tuple)):
        kind = "list" if isinstance(value, list) else "tuple"
        return {kind: [_encode(item, _join(key, str(i)), arrays) for i, item in enumerate(value)]}
    if _is_json_scalar(value):
        return {"value": _json_scalar(value)}
    raise TypeError(f"pyengine.save: unsupported value of type {type(value).__name__} at key '{key}'")


def _add_array(value, key: str, arrays: dict) -> str:
    array = value.data if isinstance(value, Tensor) else value
    if array.dtype.kind not in _DTYPE_KINDS:
        raise TypeError(f"pyengine.save: array of dtype {array.dtype} at key '{key}' is not supported "
                        f"(bool, integer and float arrays are)")
    if not key:
        raise ValueError("pyengine.save: a tensor needs a key (the top level must be a dict)")
    if key in arrays:
        raise ValueError(f"pyengine.save: two tensors flatten to the same key '{key}'")
    arrays[key] = np.require(array, requirements="C")  # keeps 0-d arrays 0-d
    return key


def _check_key(k, parent: str) -> str:
    if isinstance(k, bool) or not isinstance(k, (str, int)):
        raise TypeError(f"pyengine.save: dict key {k!r} under '{parent}' must be a str or an int")
    return str(k)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _is_json_scalar(value) -> bool:
    return isinstance(value, _SCALARS) or isinstance(value, (np.bool_, np.integer, np.floating))


def _json_scalar(value):
    if isinstance(value, (np.bool_, np.integer, np.floating)):
        return value.item()
    return value


# ---------------------------------------------------------------- decoding
def _decode(node: dict, tensors: dict, used: set):
    """The value `node` describes; the names of the tensors it takes go into `used`."""
    (kind, content), = node.items()
    if kind == "tensor":
        used.add(content)
        return tensors[content]
    if kind == "value":
        return content
    if kind == "dict":
        return {key: _decode(child, tensors, used) for key, child in content}
    if kind == "list":
        return [_decode(child, tensors, used) for child in content]
    if kind == "tuple":
        return tuple(_decode(child, tensors, used) for child in content)
    raise ValueError(f"unknown node kind {kind!r}")


def _writable(array: np.ndarray) -> np.ndarray:
    """A loaded array as a Tensor holds it: writable, C-contiguous, in native byte order (the file is
    little-endian; reading it is a copy anyway)."""
    if array.flags.writeable and array.flags.c_contiguous and array.dtype.isnative:
        return array
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))


def _one_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
