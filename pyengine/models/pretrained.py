"""Hugging Face model folders: read them, build the matching pyengine model, write them back.

A folder holds `config.json` and the weights, either one `model.safetensors` or the shards listed by
`model.safetensors.index.json` (its `weight_map` names the shard of every tensor). The weights are
memory-mapped, so opening a large checkpoint costs no copy until the values are copied into the
model's parameters.

`from_pretrained` dispatches on the config's `model_type` to the module that knows the architecture;
each such module defines `from_hf(config: dict, tensors: dict) -> model`, which maps Hugging Face's
names and layouts to pyengine's and calls `assign_state`.
"""

from __future__ import annotations

import importlib
import json
import os

import numpy as np

from pyengine.io import safe_file

__all__ = ["ARCHITECTURES", "from_pretrained", "read_config", "read_generation_config", "read_folder", "assign_state",
           "write_folder"]

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# model_type in config.json -> the module whose from_hf(config, tensors) builds the model.
ARCHITECTURES = {
    "gpt2": "pyengine.models.hf_gpt2",
    "bert": "pyengine.models.bert",
    "t5": "pyengine.models.t5",
}


def from_pretrained(path: str | os.PathLike):
    """The pyengine model for the Hugging Face folder at `path`, with its weights; a model that generates
    also gets the folder's generation_config.json, where there is one, as the defaults of its generate
    (``model.use_generation_config``, see pyengine.generation.config)."""
    config, tensors = read_folder(path)
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ValueError(f"from_pretrained: {os.fspath(path)} holds a model of type {model_type!r}; "
                         f"pyengine knows {', '.join(sorted(ARCHITECTURES))}")
    model = importlib.import_module(ARCHITECTURES[model_type]).from_hf(config, tensors)
    settings = read_generation_config(path)
    if settings is not None and hasattr(model, "use_generation_config"):
        model.use_generation_config(settings)
    return model


def read_generation_config(path: str | os.PathLike) -> dict | None:
    """The parsed generation_config.json of the folder at `path`, or None when it has none."""
    file_path = os.path.join(_folder(path), GENERATION_CONFIG_FILE)
    if not os.path.isfile(file_path):
        return None
    return _read_json(file_path)


def read_config(path: str | os.PathLike) -> dict:
    """The parsed config.json of the folder at `path`."""
    folder = _folder(path)
    config_path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"from_pretrained: {folder} has no {CONFIG_FILE}")
    return _read_json(config_path)


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as file:
            content = json.load(file)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"from_pretrained: {path} is not valid JSON ({error})") from None
    if not isinstance(content, dict):
        raise ValueError(f"from_pretrained: {path} does not hold a JSON object")
    return content


def read_folder(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """(config, tensors) of a Hugging Face folder: tensors by Hugging Face name, read-only, memory-mapped
    (float16 and bfloat16 widened to float32, integer buffers as they are)."""
    folder = _folder(path)
    config = read_config(folder)
    single, index = os.path.join(folder, WEIGHTS_FILE), os.path.join(folder, INDEX_FILE)
    if os.path.isfile(single):
        tensors = _read_weights(single)
    elif os.path.isfile(index):
        tensors = _read_shards(folder, index)
    else:
        raise FileNotFoundError(f"from_pretrained: {folder} has neither {WEIGHTS_FILE} nor {INDEX_FILE} "
                                f"(pyengine reads safetensors weights only)")
    return config, tensors


def _folder(path) -> str:
    folder = os.fspath(path)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"from_pretrained: no such folder: {folder}")
    return folder


def _read_weights(path: str) -> dict[str, np.ndarray]:
    arrays, _ = safe_file.read_mapped(path, "from_pretrained")
    return {name: _widened(array) for name, array in arrays.items()}


def _widened(array: np.ndarray) -> np.ndarray:
    return array.astype(np.float32) if array.dtype == np.float16 else array


def _read_shards(folder: str, index_path: str) -> dict[str, np.ndarray]:
    try:
        with open(index_path, encoding="utf-8") as file:
            weight_map = json.load(file)["weight_map"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"from_pretrained: {index_path} is not a safetensors index "
                         f"(a JSON object with a weight_map): {error}") from None
    if not isinstance(weight_map, dict):
        raise ValueError(f"from_pretrained: {index_path}: weight_map is not an object")
    tensors = {}
    for shard in sorted(set(weight_map.values())):
        if not isinstance(shard, str) or os.path.basename(shard) != shard:
            raise ValueError(f"from_pretrained: {index_path} names a shard outside the folder: {shard!r}")
        shard_tensors = _read_weights(os.path.join(folder, shard))
        listed = {name for name, file in weight_map.items() if file == shard}
        absent = sorted(listed - set(shard_tensors))
        if absent:
            raise ValueError(f"from_pretrained: {shard} lacks {absent[:5]}, which {INDEX_FILE} places there")
        tensors.update({name: shard_tensors[name] for name in listed})
    return tensors


def assign_state(model, state: dict[str, np.ndarray], caller: str):
    """Copy `state` (pyengine names -> arrays) into `model`'s parameters and buffers. Every name is
    checked first: one ValueError lists each missing, unexpected and mis-shaped tensor."""
    targets = model.state_dict()
    missing = [name for name in targets if name not in state]
    unexpected = [name for name in state if name not in targets]
    misshaped = [f"'{name}' is {tuple(np.shape(state[name]))}, the model expects {targets[name].shape}"
                 for name in targets if name in state and tuple(np.shape(state[name])) != targets[name].shape]
    problems = ([f"missing {missing}"] if missing else []) + ([f"unexpected {unexpected}"] if unexpected else [])
    problems += misshaped
    if problems:
        raise ValueError(f"{caller}: the checkpoint does not fit {type(model).__name__}: " + "; ".join(problems))
    for name, target in targets.items():
        value = np.asarray(state[name])
        if value.dtype.kind != target.dtype.kind and not (value.dtype.kind in "iu" and target.dtype.kind in "iu"):
            raise TypeError(f"{caller}: '{name}' is {value.dtype}, the model holds {target.dtype}")
        np.copyto(target, value, casting="same_kind")
    return model


def write_folder(path: str | os.PathLike, config: dict, tensors: dict[str, np.ndarray]) -> None:
    """Write config.json and model.safetensors (crash-safe, see pyengine.io.safe_file) into the folder
    `path`, creating it; transformers' from_pretrained reads the result."""
    folder = os.fspath(path)
    os.makedirs(folder, exist_ok=True)
    arrays = {name: np.ascontiguousarray(array) for name, array in tensors.items()}
    safe_file.write(arrays, {"format": "pt"}, os.path.join(folder, WEIGHTS_FILE))
    temporary = os.path.join(folder, CONFIG_FILE + ".tmp")
    with open(temporary, "w", encoding="utf-8") as file:
        json.dump(config, file, indent=2, sort_keys=True)
        file.write("\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, os.path.join(folder, CONFIG_FILE))
