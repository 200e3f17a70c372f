"""The GPT commands of the command line: `pyengine train gpt` and `pyengine generate`."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

import numpy as np

import pyengine

_TRAIN_HELP = {
    "data": "text file to train on; None: the .py files of Python's standard library",
    "n_layer": "transformer blocks",
    "n_head": "attention heads per block",
    "n_embd": "embedding width",
    "block_size": "context length in characters",
    "dropout": "dropout probability (attention, residuals, embeddings)",
    "bias": "biases in the linear layers and layer norms",
    "batch_size": "sequences per step",
    "max_steps": "optimizer steps in all",
    "lr": "peak learning rate (AdamW)",
    "min_lr": "learning rate at the end of the cosine decay",
    "warmup_steps": "steps of linear warm-up",
    "weight_decay": "AdamW's decoupled weight decay on the matrices",
    "beta2": "AdamW's second-moment decay",
    "grad_clip": "clip the global gradient norm to this (0: off)",
    "eval_interval": "steps between validation runs (and checkpoints)",
    "eval_iters": "validation batches per evaluation",
    "seed": "seed of the initialisation, the batches and dropout",
    "check_finite": "stop at the first inf or NaN, naming the graph step that wrote it",
    "checkpoint": "checkpoint file to write (and to --resume from)",
}


def add_train_gpt(models, run) -> argparse.ArgumentParser:
    """Register `pyengine train gpt` on the `train` subparsers."""
    from pyengine.train_gpt import GPTTrainConfig

    parser = models.add_parser("gpt", help="a character-level GPT on Python's standard-library source",
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for field in fields(GPTTrainConfig):
        if field.name in ("resume", "progress"):
            continue
        flag = "--" + field.name.replace("_", "-")
        if field.type in (bool, "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default,
                                help=_TRAIN_HELP[field.name])
        else:
            kind = {"int": int, "float": float}.get(str(field.type), str)
            parser.add_argument(flag, type=kind, default=field.default, help=_TRAIN_HELP[field.name])
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --checkpoint")
    parser.add_argument("--no-checkpoint", action="store_true", help="write no checkpoint")
    parser.add_argument("--threads", type=int, default=0, help="kernel threads (0: OpenMP's default)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)
    return parser


def cmd_train_gpt(args) -> int:
    from pyengine.graph import NonFiniteError
    from pyengine.train_gpt import CheckpointError, config_from_args, train_gpt

    if args.threads:
        pyengine.set_num_threads(args.threads)
    config = config_from_args(args)
    config.progress = not args.quiet
    try:
        metrics = train_gpt(config)
    except NonFiniteError as error:
        kept = f"; the last good checkpoint is {config.checkpoint}" if config.checkpoint else ""
        print(f"pyengine train gpt: {error}{kept}", file=sys.stderr)
        return 3
    except (CheckpointError, FileNotFoundError, ValueError) as error:
        print(f"pyengine train gpt: {error}", file=sys.stderr)
        return 2
    if metrics["interrupted"]:
        print(f"interrupted at step {metrics['steps']}" +
              (f"; checkpoint: {metrics['checkpoint']} (continue with --resume)" if metrics["checkpoint"] else ""))
        return 130
    if metrics["checkpoint"]:
        print(f"checkpoint: {metrics['checkpoint']}")
    print(f"train loss: {metrics['train_loss']:.4f}")
    print(f"val loss: {metrics['val_loss']:.4f}")
    return 0


# Options both forms of `pyengine generate` take, with their defaults per form: (--checkpoint, --model).
# --model's None: generate's default (the folder's generation_config.json, else transformers').
_SHARED_DEFAULTS = {"max_new_tokens": (200, None), "temperature": (0.8, None), "top_k": (None, None),
                    "top_p": (None, None), "seed": (0, None)}


def add_generate(commands, run) -> argparse.ArgumentParser:
    """Register `pyengine generate` (a `pyengine train gpt` checkpoint, or a Hugging Face folder with --model)."""
    from pyengine.cli_hf import add_model_options

    parser = commands.add_parser("generate", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                 help="generate text from a `pyengine train gpt` checkpoint or a Hugging Face "
                                 "folder (--model)")
    parser.add_argument("--checkpoint", default="checkpoints/gpt.safetensors", help="checkpoint to sample from")
    parser.add_argument("--prompt", action="append", default=argparse.SUPPRESS,
                        help="text to continue (default: a newline); --model takes several, batched")
    shared = argparse.SUPPRESS  # defaults per form, given in the help
    parser.add_argument("--max-new-tokens", type=int, default=shared,
                        help="characters (--checkpoint, default 200) or tokens (--model) to generate")
    parser.add_argument("--temperature", type=float, default=shared,
                        help="softmax temperature (--checkpoint: default 0.8, 0 is greedy; --model: the folder's "
                             "generation_config.json, else 1.0)")
    parser.add_argument("--top-k", type=int, default=shared,
                        help="sample among the k most likely (--checkpoint: default all; --model: the folder's "
                             "generation_config.json, else 50)")
    parser.add_argument("--top-p", type=float, default=shared, help="nucleus sampling mass (default: off)")
    parser.add_argument("--seed", type=int, default=shared,
                        help="seed of the sampling (--checkpoint: default 0; --model: default fresh entropy)")
    parser.add_argument("--no-cache", action="store_true", help="--checkpoint: recompute the whole context per token")
    parser.add_argument("--threads", type=int, default=0, help="kernel threads (0: OpenMP's default)")
    add_model_options(parser)
    parser.set_defaults(run=run)
    return parser


def _given(args, form: int):
    return lambda name: getattr(args, name, _SHARED_DEFAULTS[name][form])


def cmd_generate(args) -> int:
    from pyengine.train_gpt import CheckpointError, load_checkpoint, model_from_checkpoint

    if args.threads:
        pyengine.set_num_threads(args.threads)
    if args.model is not None:
        from pyengine.cli_hf import cmd_generate_model

        return cmd_generate_model(args, _given(args, 1))
    given = _given(args, 0)
    prompts = getattr(args, "prompt", ["\n"])
    text = prompts[0]
    try:
        if len(prompts) > 1:
            raise ValueError("--checkpoint takes one --prompt")
        model, vocab = model_from_checkpoint(load_checkpoint(args.checkpoint), args.checkpoint)
        prompt = vocab.encode(text)[None, :]
        if prompt.shape[1] > model.config.block_size:
            raise ValueError(f"the prompt has {prompt.shape[1]} characters, more than the model's "
                             f"context of {model.config.block_size}")
    except (CheckpointError, ValueError) as error:
        print(f"pyengine generate: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(text)

    def stream(token: np.ndarray) -> None:
        sys.stdout.write(vocab.decode(token[:1]))
        sys.stdout.flush()

    try:
        model.generate(prompt, given("max_new_tokens"), temperature=given("temperature"), top_k=given("top_k"),
                       top_p=given("top_p"), seed=given("seed"), use_cache=not args.no_cache, stream=stream)
    except ValueError as error:
        print(f"\npyengine generate: {error}", file=sys.stderr)
        return 2
    sys.stdout.write("\n")
    return 0
