"""`pyengine generate --model PATH`: generation from a Hugging Face folder (its
model and tokenizer), with transformers' generate options and defaults."""

from __future__ import annotations

import argparse
import sys

# option -> (default, help); shown in --help, applied to the --model form only.
MODEL_OPTIONS = {
    "max_length": (None, "total length of the output in tokens (default: 20 new tokens)"),
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
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", help=f"--model: {text}")
        elif name == "early_stopping":
            parser.add_argument(flag, choices=("true", "false", "never"), default=default, help=f"--model: {text}")
        else:
            kind = {int: int, float: float}.get(type(default), int)
            parser.add_argument(flag, type=kind, default=argparse.SUPPRESS if default is None else default,
                                help=f"--model: {text}")


_EARLY_STOPPING = {"true": True, "false": False, "never": "never"}


def cmd_generate_model(args, given) -> int:
    """Run the --model form; `given(name, default)` reads an option shared with
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
        out = model.generate(batch["input_ids"], attention_mask=batch["attention_mask"],
                             max_length=getattr(args, "max_length", None), max_new_tokens=given("max_new_tokens", None),
                             do_sample=args.do_sample, num_beams=args.num_beams,
                             temperature=given("temperature", 1.0), top_k=given("top_k", 50),
                             top_p=given("top_p", 1.0), length_penalty=args.length_penalty,
                             early_stopping=_EARLY_STOPPING[args.early_stopping],
                             num_return_sequences=args.num_return_sequences,
                             no_repeat_ngram_size=args.no_repeat_ngram_size, seed=given("seed", None))
    except (FileNotFoundError, ValueError, TypeError, KeyError) as error:
        print(f"pyengine generate: {error}".replace("\n", " "), file=sys.stderr)
        return 2
    for text in tokenizer.batch_decode(out.tolist(), skip_special_tokens=True):
        print(text)
    return 0
