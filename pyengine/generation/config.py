"""A folder's ``generation_config.json`` as the defaults of ``generate``, as transformers reads it.

transformers' ``from_pretrained`` loads the folder's generation_config.json (when there is one) as
the model's GenerationConfig, and ``generate`` takes each setting from, in order: the call's own
argument, that file, transformers' global default. pyengine does the same: ``from_pretrained``
gives the model the file (``model.use_generation_config(settings)``): its special token ids replace
the model config's, and its other settings (``generation_defaults``) become the defaults of
``generate``, explicit arguments winning. A setting pyengine's generate does not implement
(``repetition_penalty``, ``min_length``, ...) set to anything but transformers' default makes
``generate`` raise, naming it, rather than give other tokens than transformers would.
"""

from __future__ import annotations

__all__ = ["DEFAULTS", "TOKEN_KEYS", "UNSET", "split_generation_config", "resolve_settings"]


class _Unset:
    """The default of an argument whose explicit None means something of its own."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset()

# The settings pyengine's generate takes, with transformers' global defaults (GenerationConfig's).
DEFAULTS = {"max_length": None, "max_new_tokens": None, "do_sample": False, "num_beams": 1, "temperature": 1.0,
            "top_k": 50, "top_p": 1.0, "length_penalty": 1.0, "early_stopping": False, "num_return_sequences": 1,
            "no_repeat_ngram_size": 0}
TOKEN_KEYS = ("eos_token_id", "pad_token_id", "bos_token_id", "decoder_start_token_id")
# Settings whose explicit None is a value, not "unset": transformers' generate sets what it is given, so
# top_k=None adds no top-k warper (as top_k=0), whatever the model's generation config says; left out
# (UNSET), the setting takes the model's, else the default (50).
NONE_MEANS = {"top_k": 0}
# Settings that change the tokens, which pyengine's generate does not implement: each at the value that
# leaves transformers' generate as pyengine's is.
_UNSUPPORTED = {"min_length": 0, "min_new_tokens": None, "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0,
                "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "min_p": None, "top_h": None,
                "bad_words_ids": None, "force_words_ids": None, "forced_bos_token_id": None,
                "forced_eos_token_id": None, "suppress_tokens": None, "begin_suppress_tokens": None,
                "encoder_no_repeat_ngram_size": 0, "num_beam_groups": 1, "diversity_penalty": 0.0,
                "exponential_decay_length_penalty": None, "sequence_bias": None, "renormalize_logits": False,
                "constraints": None, "penalty_alpha": None, "guidance_scale": None, "stop_strings": None,
                "max_time": None, "remove_invalid_values": False, "watermarking_config": None}


def split_generation_config(settings: dict) -> tuple[dict, dict]:
    """(special token ids, the other settings) of a generation_config.json's contents: the token ids
    the file names, and the settings generate takes or refuses (bookkeeping keys such as
    transformers_version, use_cache or the output flags are dropped)."""
    if not isinstance(settings, dict):
        raise ValueError(f"generation_config: expected a JSON object, got {type(settings).__name__}")
    tokens = {key: settings[key] for key in TOKEN_KEYS if key in settings}
    defaults = {key: value for key, value in settings.items() if key in DEFAULTS or key in _UNSUPPORTED}
    return tokens, defaults


def resolve_settings(model, given: dict) -> dict:
    """Each setting of DEFAULTS: `given`'s when not None (nor UNSET), else the model's
    generation_defaults', else transformers' default; an explicit None of NONE_MEANS is that value.
    max_length and max_new_tokens are resolved apart: when both end up set (from either source),
    max_new_tokens wins in generate, as in transformers. ValueError naming a setting of the model's
    that generate does not implement."""
    defaults = dict(getattr(model, "generation_defaults", None) or {})
    refused = {key: value for key, value in defaults.items()
               if key in _UNSUPPORTED and value != _UNSUPPORTED[key] and value != []}
    if refused:
        names = ", ".join(f"{key}={value!r}" for key, value in sorted(refused.items()))
        raise ValueError(f"generate: the model's generation config sets {names}, which pyengine's generate does "
                         f"not implement (set them to transformers' defaults in model.generation_defaults)")
    resolved = {}
    for key, default in DEFAULTS.items():
        value = given.get(key, UNSET)
        if value is None and key in NONE_MEANS:
            resolved[key] = NONE_MEANS[key]
            continue
        if value is UNSET or value is None:
            value = defaults.get(key)
        resolved[key] = default if value is None else value
    return resolved
