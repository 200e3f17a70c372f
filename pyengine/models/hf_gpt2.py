"""Hugging Face GPT-2 (``GPT2LMHeadModel``) folders, both ways.

``from_hf(config, tensors)`` builds a pyengine GPT2LMHeadModel (a GPT with
transformers' call signature) from a folder's config.json and weights:
GPT-2's Conv1D stores its weights (in, out), pyengine's Linear (out, in), so
they are transposed; the head is tied to the token embedding
(``lm_head.weight``, where a checkpoint holds it, must be that embedding);
``gelu_new`` is the tanh GELU; the causal-mask buffers of old checkpoints
(``attn.bias``, ``attn.masked_bias``) are skipped, and names without the
``transformer.`` prefix (a GPT2Model folder) are accepted.

``save_pretrained(model, path)`` writes any pyengine GPT (one trained by
``pyengine train gpt`` too) as a folder that transformers'
GPT2LMHeadModel.from_pretrained loads with the same logits. A model without
biases gets zero biases (GPT-2 always has them). With ``vocab`` (a character-level GPT's
CharVocab, or its characters) a tokenizer.json of one token per character is
written beside it, so that transformers' AutoTokenizer and ``pyengine
generate --model`` read the folder as a whole.
"""

from __future__ import annotations

import re
from collections import namedtuple

import numpy as np

from pyengine import functional as F
from pyengine.models.gpt import GPT, GPTConfig
from pyengine.models.gpt_generate import _padding_mask, check_attention_mask
from pyengine.models.pretrained import assign_state, write_folder
from pyengine.tensor import Tensor

__all__ = ["GPT2LMHeadModel", "CausalLMOutput", "from_hf", "save_pretrained", "hf_config"]

CausalLMOutput = namedtuple("CausalLMOutput", ["loss", "logits"])

_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")  # old checkpoints' causal masks
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
_GENERATION_KEYS = ("eos_token_id", "pad_token_id", "bos_token_id")


class GPT2LMHeadModel(GPT):
    """A GPT loaded from (or written as) a Hugging Face GPT-2, called as
    transformers' GPT2LMHeadModel: ``model(input_ids, attention_mask=None,
    labels=None, position_ids=None)`` returns the logits (B, T, V) Tensor, or
    ``CausalLMOutput(loss, logits)`` with labels (the next-token loss: labels
    shifted by one inside, -100 ignored). ``model.generate(...)`` takes
    transformers' arguments (see pyengine.generation.generate)."""

    def __init__(self, config: GPTConfig, hf: dict | None = None, generator=None):
        super().__init__(config, generator)
        self.hf_config = dict(hf or {})
        settings = {key: self.hf_config.get(key) for key in _GENERATION_KEYS}
        self._generation_config = dict(settings, is_encoder_decoder=False, vocab_size=config.vocab_size,
                                       max_position_embeddings=config.block_size)
        if self.hf_config.get("max_length"):
            self._generation_config["max_length"] = self.hf_config["max_length"]

    def use_generation_config(self, settings: dict) -> None:
        """A generation_config.json's contents: its token ids replace the config's, its other settings
        become the defaults of generate (``generation_defaults``; see pyengine.generation.config)."""
        from pyengine.generation.config import split_generation_config

        tokens, self.generation_defaults = split_generation_config(settings)
        self._generation_config.update({k: v for k, v in tokens.items() if k in _GENERATION_KEYS})

    def forward(self, input_ids, attention_mask=None, labels=None, position_ids=None):
        ids = self._check_indices(input_ids, "input_ids")
        mask = check_attention_mask(attention_mask, ids.shape, "GPT2LMHeadModel")
        positions = None
        if position_ids is not None:
            positions = np.asarray(position_ids.numpy() if isinstance(position_ids, Tensor) else position_ids)
            if positions.shape not in (ids.shape, ids.shape[1:]) or positions.dtype.kind not in "iu":
                raise ValueError(f"GPT2LMHeadModel: position_ids must be integers {ids.shape}, "
                                 f"got {positions.dtype} {positions.shape}")
            if positions.size and (positions.min() < 0 or positions.max() >= self.config.block_size):
                raise ValueError(f"GPT2LMHeadModel: position_ids outside [0, {self.config.block_size})")
            positions = np.ascontiguousarray(positions, dtype=np.int64)
        padding = None if mask is None or mask.all() else Tensor(_padding_mask(mask))
        logits = self.logits(ids, positions, padding)
        if labels is None:
            return logits
        targets = self._check_labels(labels, ids.shape)
        batch, steps = ids.shape
        shifted = logits[:, :-1].reshape(batch * (steps - 1), self.config.vocab_size)
        loss = F.cross_entropy(shifted, np.ascontiguousarray(targets[:, 1:]).reshape(-1))
        return CausalLMOutput(loss, logits)

    def _check_labels(self, labels, shape) -> np.ndarray:
        array = np.asarray(labels.numpy() if isinstance(labels, Tensor) else labels)
        if array.shape != tuple(shape) or array.dtype.kind not in "iu" or shape[1] < 2:
            raise ValueError(f"GPT2LMHeadModel: labels must be integers {tuple(shape)} with T >= 2, "
                             f"got {array.dtype} {array.shape}")
        valid = array[array != -100]
        if valid.size and (valid.min() < 0 or valid.max() >= self.config.vocab_size):
            raise ValueError(f"GPT2LMHeadModel: labels hold ids outside [0, {self.config.vocab_size}) (and -100)")
        return array.astype(np.int64)

    def generate(self, input_ids, attention_mask=None, **options) -> np.ndarray:
        """transformers' generate: see pyengine.generation.generate."""
        from pyengine.generation import generate

        return generate(self, input_ids, attention_mask, **options)


def _config_from_hf(config: dict) -> GPTConfig:
    activation = config.get("activation_function", "gelu_new")
    if activation not in _TANH_GELUS:
        raise ValueError(f"from_hf gpt2: activation_function {activation!r} is not supported "
                         f"(pyengine's GPT uses the tanh GELU: {', '.join(_TANH_GELUS)})")
    unsupported = [key for key, default in (("scale_attn_by_inverse_layer_idx", False), ("add_cross_attention", False),
                                            ("scale_attn_weights", True), ("tie_word_embeddings", True))
                   if bool(config.get(key, default)) != default]
    if unsupported:
        raise ValueError(f"from_hf gpt2: config options pyengine's GPT does not have: {unsupported}")
    try:
        return GPTConfig(n_layer=config["n_layer"], n_head=config["n_head"], n_embd=config["n_embd"],
                         block_size=config["n_positions"], vocab_size=config["vocab_size"],
                         dropout=float(config.get("resid_pdrop", 0.0)), bias=True,
                         layer_norm_eps=float(config.get("layer_norm_epsilon", 1e-5)), n_inner=config.get("n_inner"))
    except KeyError as error:
        raise ValueError(f"from_hf gpt2: config.json lacks {error.args[0]!r}") from None


def from_hf(config: dict, tensors: dict) -> GPT2LMHeadModel:
    """A GPT2LMHeadModel from a Hugging Face GPT-2 config and its tensors
    (Hugging Face names), in eval mode as transformers' from_pretrained."""
    model = GPT2LMHeadModel(_config_from_hf(config), config)
    state, head = {}, None
    for name, array in tensors.items():
        short = name[len("transformer."):] if name.startswith("transformer.") else name
        if _BUFFER.fullmatch(short):
            continue
        if short == "lm_head.weight":
            head = array
            continue
        state["transformer." + short] = array.T if short.endswith(_CONV1D) and np.ndim(array) == 2 else array
    assign_state(model, state, "from_hf gpt2")
    if head is not None and not np.array_equal(head, model.transformer.wte.weight.numpy()):
        raise ValueError(f"from_hf gpt2: lm_head.weight {np.shape(head)} is not the token embedding "
                         f"transformer.wte.weight: pyengine's GPT ties its head")
    return model.eval()


def hf_config(model: GPT) -> dict:
    """The config.json of GPT-2 for a pyengine GPT."""
    c = model.config
    config = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
        "n_layer": c.n_layer, "n_head": c.n_head, "n_embd": c.n_embd, "n_positions": c.block_size,
        "n_ctx": c.block_size, "vocab_size": c.vocab_size, "n_inner": c.n_inner, "layer_norm_epsilon": c.layer_norm_eps,
        "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": c.dropout, "initializer_range": 0.02,
        "scale_attn_weights": True, "tie_word_embeddings": True, "use_cache": True,
    }
    config.update({key: model.generation_config.get(key) for key in _GENERATION_KEYS})
    original = getattr(model, "hf_config", None) or {}
    return {**{k: v for k, v in original.items() if k not in config and not k.startswith("_")}, **config}


def _hf_tensors(model: GPT) -> dict:
    tensors = {}
    for name, array in model.state_dict().items():
        tensors[name] = array.T if name.endswith(_CONV1D) else array
    for i, block in enumerate(model.transformer.h):  # GPT-2 always has biases: a bias-free GPT writes zeros
        for name, linear in (("attn.c_attn", block.attn.c_attn), ("attn.c_proj", block.attn.c_proj),
                             ("mlp.c_fc", block.mlp.c_fc), ("mlp.c_proj", block.mlp.c_proj)):
            tensors.setdefault(f"transformer.h.{i}.{name}.bias", np.zeros(linear.weight.shape[0], np.float32))
    return tensors


def save_pretrained(model: GPT, path, vocab=None) -> None:
    """See GPT.save_pretrained."""
    if vocab is not None:
        chars = list(getattr(vocab, "chars", vocab))
        if len(chars) > model.config.vocab_size:
            raise ValueError(f"save_pretrained: {len(chars)} characters do not fit the model's vocabulary of "
                             f"{model.config.vocab_size}")
    write_folder(path, hf_config(model), _hf_tensors(model))
    if vocab is not None:
        write_char_tokenizer(path, chars, model.config.block_size)


def write_char_tokenizer(path, chars: list, max_length: int) -> None:
    """tokenizer.json (and tokenizer_config.json) of a character vocabulary:
    each character one token, id = its index in `chars`, decoded by joining;
    transformers' PreTrainedTokenizerFast and pyengine.tokenizer load it."""
    import json
    import os

    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as Backend

    if len(set(chars)) != len(chars) or not all(isinstance(c, str) and len(c) == 1 for c in chars):
        raise ValueError("save_pretrained: the vocabulary must be distinct single characters")
    backend = Backend(models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character
    backend.decoder = decoders.Fuse()
    backend.save(os.path.join(os.fspath(path), "tokenizer.json"))
    settings = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length,
                "clean_up_tokenization_spaces": False}
    with open(os.path.join(os.fspath(path), "tokenizer_config.json"), "w", encoding="utf-8") as file:
        json.dump(settings, file, indent=2)
        file.write("\n")
