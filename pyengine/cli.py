"""The `pyengine` command line: `pyengine info`, `pyengine train mlp`."""

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

    if args.threads:
        pyengine.set_num_threads(args.threads)
    config = MLPConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       momentum=args.momentum, hidden=tuple(args.hidden), seed=args.seed,
                       checkpoint=None if args.no_checkpoint else args.checkpoint,
                       progress=not args.quiet)
    metrics = train_mlp(config)
    print(f"final loss: {metrics['final_loss']:.4f}")
    print(f"train accuracy: {metrics['train_accuracy']:.4f}")
    print(f"test accuracy: {metrics['test_accuracy']:.4f}")
    if "checkpoint" in metrics:
        print(f"checkpoint: {metrics['checkpoint']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyengine", description="pyengine: a deep-learning engine")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="version, ISA level, threads, CUDA").set_defaults(run=cmd_info)

    train = commands.add_parser("train", help="train a model")
    models = train.add_subparsers(dest="model", required=True)
    mlp = models.add_parser("mlp", help="an MLP on scikit-learn's digits (no download)")
    defaults = __import__("pyengine.train", fromlist=["MLPConfig"]).MLPConfig()
    mlp.add_argument("--epochs", type=int, default=defaults.epochs)
    mlp.add_argument("--batch-size", type=int, default=defaults.batch_size)
    mlp.add_argument("--lr", type=float, default=defaults.lr)
    mlp.add_argument("--momentum", type=float, default=defaults.momentum)
    mlp.add_argument("--hidden", type=int, nargs="+", default=list(defaults.hidden))
    mlp.add_argument("--seed", type=int, default=defaults.seed)
    mlp.add_argument("--threads", type=int, default=0, help="kernel threads (default: OpenMP's)")
    mlp.add_argument("--checkpoint", default=defaults.checkpoint, help="safetensors file to write")
    mlp.add_argument("--no-checkpoint", action="store_true")
    mlp.add_argument("--quiet", action="store_true", help="no progress bar")
    mlp.set_defaults(run=cmd_train_mlp)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
