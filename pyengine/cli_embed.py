"""`pyengine embed "text" ...`: sentence embeddings of a sentence-transformers folder (default: the
packaged all-MiniLM-L6-v2), printed as each vector's first values and its norm."""

from __future__ import annotations

import argparse
import sys

import numpy as np

import pyengine


def add_embed(commands) -> argparse.ArgumentParser:
    """Register `pyengine embed`."""
    parser = commands.add_parser("embed", help="sentence embeddings (default model: all-MiniLM-L6-v2)",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("sentences", nargs="+", help="the texts to embed")
    parser.add_argument("--model", default=None,
                        help="sentence-transformers folder (None: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--values", type=int, default=5, help="leading values printed per vector")
    parser.add_argument("--batch-size", type=int, default=32, help="sentences per forward pass")
    parser.add_argument("--threads", type=int, default=0, help="kernel threads (0: OpenMP's default)")
    parser.set_defaults(run=cmd_embed)
    return parser


def cmd_embed(args) -> int:
    from pyengine.models.sentence import SentenceEncoder

    try:
        if args.values < 0:
            raise ValueError(f"--values must be >= 0, got {args.values}")
        if args.threads:
            pyengine.set_num_threads(args.threads)
        encoder = SentenceEncoder.from_pretrained(args.model)
        vectors = encoder.encode(args.sentences, batch_size=args.batch_size)
    except (FileNotFoundError, ValueError, TypeError) as error:
        print(f"pyengine embed: {error}", file=sys.stderr)
        return 2
    for text, vector in zip(args.sentences, vectors):
        head = " ".join(f"{v:+.4f}" for v in vector[:args.values])
        more = " ..." if args.values < vector.size else ""
        print(f"{text!r}: [{head}{more}] dim {vector.size} norm {float(np.linalg.norm(vector)):.4f}")
    return 0
