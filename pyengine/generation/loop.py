"""generate(): the settings, the model driver and the greedy / sampling loop
(beam search is in beam.py), with transformers' semantics."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from pyengine.generation.beam import beam_search
from pyengine.generation.config import UNSET, resolve_settings
from pyengine.generation.logits import Processors, sample
from pyengine.tensor import Tensor, no_grad

__all__ = ["generate"]

DEFAULT_NEW_TOKENS = 20  # transformers' default when neither max_length nor max_new_tokens is set


@dataclass
class Settings:
    max_length: int
    do_sample: bool
    num_beams: int
    length_penalty: float
    early_stopping: object
    num_return_sequences: int
    eos: list
    pad: int | None
    beam_fill: int


def _ids_array(value, name: str) -> np.ndarray:
    array = value.numpy() if isinstance(value, Tensor) else np.asarray(value)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.dtype.kind not in "iu":
        raise ValueError(f"generate: {name} must be an integer array (B, L), got {array.dtype} {array.shape}")
    return np.ascontiguousarray(array, dtype=np.int64)


def _token_list(value) -> list:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def _check_options(do_sample, num_beams, temperature, top_k, top_p, length_penalty, early_stopping,
                   num_return_sequences, no_repeat_ngram_size) -> None:
    def positive_int(name, value, minimum):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"generate: {name} must be an int >= {minimum}, got {value!r}")

    positive_int("num_beams", num_beams, 1)
    positive_int("num_return_sequences", num_return_sequences, 1)
    positive_int("top_k", top_k, 0)
    positive_int("no_repeat_ngram_size", no_repeat_ngram_size, 0)
    if not isinstance(do_sample, bool):
        raise ValueError(f"generate: do_sample must be a bool, got {do_sample!r}")
    if do_sample and not temperature > 0:
        raise ValueError(f"generate: temperature must be > 0 when sampling, got {temperature}")
    if not 0.0 <= top_p <= 1.0:
        raise ValueError(f"generate: top_p must be in [0, 1], got {top_p}")
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"generate: early_stopping must be True, False or 'never', got {early_stopping!r}")
    if not np.isfinite(length_penalty):
        raise ValueError(f"generate: length_penalty must be finite, got {length_penalty}")
    if num_beams == 1 and not do_sample and num_return_sequences > 1:
        raise ValueError("generate: greedy search returns one sequence per prompt: num_return_sequences > 1 "
                         "needs num_beams > 1 or do_sample=True")
    if num_return_sequences > num_beams > 1:
        raise ValueError(f"generate: num_return_sequences ({num_return_sequences}) must be <= num_beams "
                         f"({num_beams})")


def _default_max_length(config: dict, prompt_length: int) -> int:
    """transformers' default: 20 new tokens, within max_position_embeddings."""
    length = prompt_length + DEFAULT_NEW_TOKENS
    limit = config.get("max_position_embeddings")
    return min(length, int(limit)) if limit else length


def _default_mask(ids: np.ndarray, pad, eos: list) -> np.ndarray:
    """transformers' inferred mask: the non-pad tokens when the prompt holds a
    pad token that is not an EOS, else all ones."""
    if pad is not None and pad not in eos and (ids == pad).any():
        return (ids != pad).astype(np.int64)
    return np.ones(ids.shape, np.int64)


class Stepper:
    """Drives a model through the protocol (see the package docstring): the
    prompt (the prefill, or the encoder), then one token per row per step;
    rows follow `reorder`."""

    def __init__(self, model, input_ids, attention_mask, decoder_prompt, expand: int, capacity: int):
        self.model, self.expand = model, expand
        self.encoder_decoder = bool(model.generation_config.get("is_encoder_decoder", False))
        batch = input_ids.shape[0]
        rows = np.repeat(np.arange(batch), expand)
        if self.encoder_decoder:
            hidden = model.encode(input_ids, attention_mask)
            hidden = hidden.numpy() if isinstance(hidden, Tensor) else np.asarray(hidden)
            self.encoder_hidden = np.ascontiguousarray(hidden)  # one row per input, for its `expand` rows
            self.encoder_mask = attention_mask
            self.prompt = decoder_prompt[rows]
            self.cache = model.new_cache(batch * expand, capacity)
            self.mask = None
        else:
            self.prompt = input_ids
            self.cache = model.new_cache(batch, capacity)
            self.mask = None if attention_mask.all() else attention_mask
            self.rows = rows

    def first(self) -> np.ndarray:
        if self.encoder_decoder:
            return self._step(self.prompt)
        logits = self._step(self.prompt)
        if self.expand > 1:
            self.cache.reorder(self.rows)
            logits = logits[self.rows]
            if self.mask is not None:
                self.mask = self.mask[self.rows]
        return logits

    def next(self, tokens: np.ndarray) -> np.ndarray:
        if self.mask is not None:
            self.mask = np.concatenate([self.mask, np.ones((len(self.mask), 1), np.int64)], axis=1)
        return self._step(np.ascontiguousarray(tokens, dtype=np.int64)[:, None])

    def reorder(self, rows: np.ndarray) -> None:
        self.cache.reorder(rows)

    def _step(self, ids: np.ndarray) -> np.ndarray:
        if self.encoder_decoder:
            logits = self.model.decode_step(ids, self.cache, None, encoder_hidden=self.encoder_hidden,
                                            encoder_attention_mask=self.encoder_mask)
        else:
            logits = self.model.decode_step(ids, self.cache, self.mask)
        logits = logits.numpy() if isinstance(logits, Tensor) else logits
        return np.asarray(logits, dtype=np.float32)


def _greedy_or_sample(stepper: Stepper, ids: np.ndarray, settings: Settings, processors, rng) -> np.ndarray:
    """transformers' _sample: finished rows get the pad token."""
    unfinished = np.ones(len(ids), bool)
    logits = stepper.first()
    while True:
        scores = processors(ids, logits)
        tokens = sample(scores, rng)[:, 0] if settings.do_sample else scores.argmax(axis=1)
        if settings.eos:
            tokens = np.where(unfinished, tokens, settings.pad)
        ids = np.concatenate([ids, tokens[:, None].astype(np.int64)], axis=1)
        if settings.eos:
            unfinished &= ~np.isin(tokens, settings.eos)
        if ids.shape[1] >= settings.max_length or not unfinished.any():
            return ids
        logits = stepper.next(tokens)


def generate(model, input_ids, attention_mask=None, max_length=None, max_new_tokens=None, do_sample=None,
             num_beams=None, temperature=None, top_k=UNSET, top_p=None, length_penalty=None, early_stopping=None,
             num_return_sequences=None, no_repeat_ngram_size=None, seed=None) -> np.ndarray:
    """Token ids as transformers' ``model.generate`` returns them (int64
    numpy): the prompt and the new tokens for a decoder-only model, the
    decoder's ids (from decoder_start_token_id) for an encoder-decoder.
    Greedy by default; ``do_sample`` samples (temperature, top_k, top_p,
    seeded by ``seed``); ``num_beams`` > 1 runs beam search. max_new_tokens,
    when set (here or in the model's generation_defaults), wins over
    max_length, with a UserWarning when both are (transformers logs the same
    warning); max_length's default: the model's generation_config max_length,
    else 20 new tokens within max_position_embeddings.
    A setting left at None takes the model's ``generation_defaults`` (the
    folder's generation_config.json, see pyengine.generation.config), else
    transformers' default (do_sample False, num_beams 1, temperature 1.0,
    top_k 50, top_p 1.0, length_penalty 1.0, early_stopping False,
    num_return_sequences 1, no_repeat_ngram_size 0). top_k is the exception,
    as in transformers: left out it is the model's, else 50; ``top_k=None``
    (like 0) filters nothing."""
    options = resolve_settings(model, dict(
        max_length=max_length, max_new_tokens=max_new_tokens, do_sample=do_sample, num_beams=num_beams,
        temperature=temperature, top_k=top_k, top_p=top_p, length_penalty=length_penalty,
        early_stopping=early_stopping, num_return_sequences=num_return_sequences,
        no_repeat_ngram_size=no_repeat_ngram_size))
    return _generate(model, input_ids, attention_mask, seed, **options)


def _generate(model, input_ids, attention_mask, seed, max_length, max_new_tokens, do_sample, num_beams, temperature,
              top_k, top_p, length_penalty, early_stopping, num_return_sequences, no_repeat_ngram_size):
    _check_options(do_sample, num_beams, temperature, top_k, top_p, length_penalty, early_stopping,
                   num_return_sequences, no_repeat_ngram_size)
    config = model.generation_config
    ids = _ids_array(input_ids, "input_ids")
    if ids.shape[1] == 0 and not config.get("is_encoder_decoder"):
        raise ValueError("generate: the prompt needs at least one token")
    eos = _token_list(config.get("eos_token_id"))
    pad = config.get("pad_token_id")
    pad = eos[0] if pad is None and eos else pad
    from pyengine.models.gpt_generate import check_attention_mask

    mask = check_attention_mask(attention_mask, ids.shape, "generate")
    mask = _default_mask(ids, pad, eos) if mask is None else mask
    decoder_prompt = None
    if config.get("is_encoder_decoder"):
        start = config.get("decoder_start_token_id")
        start = config.get("bos_token_id") if start is None else start
        if start is None:
            raise ValueError("generate: an encoder-decoder model needs decoder_start_token_id or bos_token_id")
        decoder_prompt = np.full((len(ids), 1), int(start), np.int64)
    prompt_length = (decoder_prompt if decoder_prompt is not None else ids).shape[1]
    if max_new_tokens is not None:
        if max_length is not None:
            warnings.warn(f"generate: both max_new_tokens (={max_new_tokens}) and max_length (={max_length}) are "
                          f"set: max_new_tokens takes precedence, as in transformers", UserWarning, stacklevel=3)
        if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
            raise ValueError(f"generate: max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
        max_length = prompt_length + int(max_new_tokens)
    elif max_length is None:
        max_length = config.get("max_length") or _default_max_length(config, prompt_length)
    if not isinstance(max_length, (int, np.integer)) or max_length < 1:
        raise ValueError(f"generate: max_length must be an int >= 1, got {max_length!r}")
    if prompt_length >= max_length:
        raise ValueError(f"generate: the prompt holds {prompt_length} tokens, max_length is {max_length}: "
                         f"nothing to generate (set max_new_tokens)")
    max_length = int(max_length)
    settings = Settings(max_length, do_sample, num_beams, float(length_penalty), early_stopping,
                        num_return_sequences, eos, pad, (pad or eos[0]) if eos else -1)
    keep = (len(eos) + 1 if eos else 2) if num_beams > 1 else 1
    processors = Processors(no_repeat_ngram_size, do_sample, float(temperature), int(top_k), float(top_p), keep)
    rng = np.random.Generator(np.random.PCG64(seed))
    expand = num_beams if num_beams > 1 else num_return_sequences
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        with no_grad():
            stepper = Stepper(model, ids, mask, decoder_prompt, expand, max_length)
            start_ids = np.repeat(decoder_prompt if decoder_prompt is not None else ids, expand, axis=0)
            if num_beams > 1:
                return beam_search(stepper, start_ids, len(ids), settings, processors, rng)
            return _greedy_or_sample(stepper, start_ids, settings, processors, rng)
    finally:
        if hasattr(model, "train"):
            model.train(was_training)
