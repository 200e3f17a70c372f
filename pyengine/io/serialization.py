"""pyengine.save / pyengine.load: a (nested) state dict as one safetensors file.

The file is a plain safetensors file. Every tensor leaf is stored under its
dotted path ("model.0.weight", "optim.state.0.momentum_buffer"), so a flat
model state_dict saved here loads with ``safetensors.torch.load_file`` under
the same names. The nesting (dicts with str or int keys, lists, tuples) and
the non-tensor leaves (None, bool, int, float, str and lists of them) are
kept as JSON in the file's metadata, under the key "pyengine.structure".

Writes are atomic: the bytes go to a temporary file in the same folder, which
is flushed, fsynced and renamed over `path`, so a crash leaves either the old
file or the new one, never a partial file.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as _safetensors_bytes

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
    _write_atomically(_safetensors_bytes(arrays, metadata=metadata), os.fspath(path))


def load(path: str | os.PathLike):
    """Read a file written by save() (or any safetensors file) back.

    Returns the saved structure with every stored array as a pyengine Tensor
    (numpy arrays saved as such come back as Tensors too; tuples stay tuples,
    dict keys keep their int or str type). A safetensors file written by
    another program comes back as a flat {name: Tensor} dict.
    Raises FileNotFoundError for a missing file, ValueError for one that is
    not a valid safetensors or pyengine file and TypeError for a dtype numpy
    lacks (bfloat16), each one line naming the path.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pyengine.load: no such file: {path}")
    try:
        with safe_open(path, framework="numpy") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: Tensor(_writable(handle.get_tensor(name))) for name in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"pyengine.load: {path} is not a readable safetensors file "
                         f"({_one_line(error)})") from None
    except TypeError as error:  # a dtype numpy lacks, such as bfloat16
        raise TypeError(f"pyengine.load: {path} holds a tensor numpy cannot represent "
                        f"({_one_line(error)})") from None
    if STRUCTURE_KEY not in metadata:
        return tensors
    try:
        return _decode(json.loads(metadata[STRUCTURE_KEY]), tensors)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
        raise ValueError(f"pyengine.load: {path} has a corrupt structure ({_one_line(error)})") from None


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
def _decode(node: dict, tensors: dict):
    (kind, content), = node.items()
    if kind == "tensor":
        return tensors[content]
    if kind == "value":
        return content
    if kind == "dict":
        return {key: _decode(child, tensors) for key, child in content}
    if kind == "list":
        return [_decode(child, tensors) for child in content]
    if kind == "tuple":
        return tuple(_decode(child, tensors) for child in content)
    raise ValueError(f"unknown node kind {kind!r}")


def _writable(array: np.ndarray) -> np.ndarray:
    return array if array.flags.writeable else array.copy()


def _one_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# ---------------------------------------------------------------- writing
def _write_atomically(data: bytes, path: str) -> None:
    """Write `data` to a temporary file next to `path`, fsync it, rename it over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies, as for open()
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    """Make the rename durable where the platform allows opening a folder."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
