"""`pyengine generate --model PATH`: generation from a Hugging Face folder (its
model and tokenizer), with transformers' generate options and defaults."""

from __future__ import annotations

import argparse
import sys

# option -> (transformers' default, help), applied to the --model form only. An option not given is
# left to generate: the folder's generation_config.json, else that default.
MODEL_OPTIONS = {
    "max_length": ("20 new tokens", "total length of the output in tokens"),
    "num_beams": (1, "beam search with this many beams (1: greedy, or sampling)"),
    "do_sample": (False, "sample instead of taking the most likely token"),
    "length_penalty": (1.0, "beam search: scores are divided by length ** this"),
    "early_stopping": ("false", "beam search: true, false or never"),
    "num_return_sequences": (1, "outputs per prompt (<= num_beams, or with --do-sample)"),
    "no_repeat_ngram_size": (0, "no n-gram of this size twice (0: off)"),
}


def add_model_options(parser) -> None:
    """The --model form's options on the `pyengine generate` parser."""
    parser.add_argument("--model", default=None,
                        help="Hugging Face folder (config.json, model.safetensors, tokenizer.json) to generate "
                             "with, instead of --checkpoint")
    for name, (default, text) in MODEL_OPTIONS.items():
        flag = "--" + name.replace("_", "-")
        shown = f"--model: {text}; default: the folder's generation_config.json, else {default}"
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=shown)
        elif name == "early_stopping":
            parser.add_argument(flag, choices=("true", "false", "never"), default=argparse.SUPPRESS, help=shown)
        else:
            kind = {int: int, float: float}.get(type(default), int)
            parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=shown)


_EARLY_STOPPING = {"true": True, "false": False, "never": "never"}


def cmd_generate_model(args, given) -> int:
    """Run the --model form; `given(name)` reads an option shared with
    --checkpoint (their defaults differ)."""
    from pyengine.models import from_pretrained
    from pyengine.tokenizer import Tokenizer

    try:
        model = from_pretrained(args.model)
        tokenizer = Tokenizer.from_pretrained(args.model)
        config = model.generation_config
        tokenizer.check_vocab(config["vocab_size"])
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token  # transformers' usual fix for GPT-2
        prompts = getattr(args, "prompt", ["\n"])
        encoder_decoder = bool(config.get("is_encoder_decoder"))
        batch = tokenizer(prompts, padding=True, padding_side="right" if encoder_decoder else "left")
        options = {name: getattr(args, name, None) for name in MODEL_OPTIONS}  # None: generate's default
        options["early_stopping"] = _EARLY_STOPPING.get(options["early_stopping"])
        if given("top_k") is not None:  # not given: the folder's, else 50 (generate's top_k=None filters nothing)
            options["top_k"] = given("top_k")
        out = model.generate(batch["input_ids"], attention_mask=batch["attention_mask"],
                             max_new_tokens=given("max_new_tokens"), temperature=given("temperature"),
                             top_p=given("top_p"), seed=given("seed"), **options)
    except (FileNotFoundError, ValueError, TypeError, KeyError) as error:
        print(f"pyengine generate: {error}".replace("\n", " "), file=sys.stderr)
        return 2
    for text in tokenizer.batch_decode(out.tolist(), skip_special_tokens=True):
        print(text)
    return 0
