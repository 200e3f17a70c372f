"""The `pyengine` command line: `pyengine info`, `pyengine train mlp|cnn|gpt`, `pyengine generate`."""

from __future__ import annotations

import argparse
import sys

import pyengine


def info_lines() -> list:
    return [
        f"pyengine {pyengine.__version__}",
        f"isa: {pyengine.get_isa()} (available: {', '.join(pyengine.available_isas())})",
        f"openmp: {'on' if pyengine.has_openmp() else 'off (single-threaded build)'}",
        f"threads: {pyengine.get_num_threads()}",
        f"cuda: {'built' if pyengine.has_cuda() else 'not built'}",
    ]


def cmd_info(args) -> int:
    print("\n".join(info_lines()))
    return 0


def cmd_train_mlp(args) -> int:
    from pyengine.train import MLPConfig, train_mlp

    return _train(args, train_mlp, MLPConfig, hidden=tuple(args.hidden))


def _train(args, train, config_class, **model_options) -> int:
    if args.threads:
        pyengine.set_num_threads(args.threads)
    config = config_class(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          momentum=args.momentum, seed=args.seed,
                          checkpoint=None if args.no_checkpoint else args.checkpoint,
                          progress=not args.quiet, **model_options)
    metrics = train(config)
    print(f"final loss: {metrics['final_loss']:.4f}")
    print(f"train accuracy: {metrics['train_accuracy']:.4f}")
    print(f"test accuracy: {metrics['test_accuracy']:.4f}")
    if "checkpoint" in metrics:
        print(f"checkpoint: {metrics['checkpoint']}")
    return 0


def _training_parser(models, name, help_text, defaults, run):
    """A `pyengine train <name>` parser with the options every recipe shares."""
    parser = models.add_parser(name, help=help_text)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--momentum", type=float, default=defaults.momentum)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=0, help="kernel threads (default: OpenMP's)")
    parser.add_argument("--checkpoint", default=defaults.checkpoint, help="safetensors file to write")
    parser.add_argument("--no-checkpoint", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)
    return parser


def build_parser() -> argparse.ArgumentParser:
    from pyengine import train_cnn
    from pyengine.cli_embed import add_embed
    from pyengine.cli_gpt import add_generate, add_train_gpt, cmd_generate, cmd_train_gpt
    from pyengine.train import MLPConfig

    parser = argparse.ArgumentParser(prog="pyengine", description="pyengine: a deep-learning engine")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="version, ISA level, threads, CUDA").set_defaults(run=cmd_info)

    train = commands.add_parser("train", help="train a model")
    models = train.add_subparsers(dest="model", required=True)
    mlp = _training_parser(models, "mlp", "an MLP on scikit-learn's digits (no download)",
                           MLPConfig(), cmd_train_mlp)
    mlp.add_argument("--hidden", type=int, nargs="+", default=list(MLPConfig().hidden))
    train_cnn.add_parser(models)
    add_train_gpt(models, cmd_train_gpt)
    add_generate(commands, cmd_generate)
    add_embed(commands)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
