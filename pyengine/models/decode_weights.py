"""The (in, out) copies of a model's weights that its decoding steps read, made once per model.

A decoding step multiplies a few rows (the batch, times the beams) by every weight of the model: it
streams the weights, and the GEMM's few-row path reads a weight about 1.4x faster in the (in, out)
layout than in a Linear's (out, in) (skinny_gemm_rows against skinny_gemm_dot, 1 thread, 12 GB/s
against 8.5). ``weights_of(model)`` keeps such copies on the model (a transposed copy of each layer's
weight, or of several stacked, made at its first use), so that every generate call after the first
finds them made. They are made again after pyengine writes any parameter in place (an optimizer
step, load_state_dict: ``pyengine.ops.PARAMETER_WRITES`` moved) or when a parameter's array is
replaced (``p.data = ...``); after writing into ``p.data`` by hand, call
``pyengine.ops.parameters_written()`` (or ``weights_of(model).clear()``). They double the memory of
the weights they copy.

``matmul(x, weight)`` is the GEMM of a step: the GEMM streams a weight once for up to 8 rows (its
few-row path) but takes its packed path from 9 rows on, which at 9 to 32 rows reads a weight 2 to 3
times slower here (1 thread, a 768 x 3072 weight from memory: 8 rows 1.45 ms, 9 rows 4.8 ms, 16 rows
6.1 ms in one call and 2.8 ms in two calls of 8, 32 rows 6.7 ms and 5.7 ms). A step of 9 to 32 rows
(a short prompt's prefill, the beams of a few prompts) calls it on 8 rows at a time.
"""

from __future__ import annotations

import numpy as np

from pyengine import kernels as K
from pyengine import ops as O

__all__ = ["DecodeWeights", "weights_of", "transposed", "matmul"]

SKINNY_ROWS, SPLIT_UP_TO = 8, 32  # the GEMM's few-row path; the most rows split into calls of that many


def matmul(x: np.ndarray, weight: np.ndarray, bias=None, activation: str = "none") -> np.ndarray:
    """activation(x @ weight + bias) of x (rows, in) and an (in, out) weight, in calls of SKINNY_ROWS
    rows when there are more, up to SPLIT_UP_TO."""
    rows = x.shape[0]
    if not SKINNY_ROWS < rows <= SPLIT_UP_TO:
        return K.matmul(x, weight, bias, activation=activation)
    x, out = np.ascontiguousarray(x), np.empty((rows, weight.shape[1]), np.float32)
    for start in range(0, rows, SKINNY_ROWS):
        end = min(rows, start + SKINNY_ROWS)
        K.matmul(x[start:end], weight, bias, activation=activation, out=out[start:end])
    return out


def transposed(w: np.ndarray, rows: int = 64) -> np.ndarray:
    """w.T, contiguous, copied in blocks of rows that stay in cache (about 4x numpy's whole transpose)."""
    out = np.empty((w.shape[1], w.shape[0]), np.float32)
    for start in range(0, w.shape[0], rows):
        out[:, start:start + rows] = w[start:start + rows].T
    return out


class DecodeWeights:
    """Transposed copies keyed by the module they serve, each remembering the arrays it was made from."""

    def __init__(self):
        self._copies: dict = {}
        self._written_at = O.PARAMETER_WRITES[0]

    def clear(self) -> None:
        self._copies.clear()
        self._written_at = O.PARAMETER_WRITES[0]

    def __len__(self) -> int:
        return len(self._copies)

    def get(self, key, *weights) -> np.ndarray:
        """The (in, out) copy of the weights' (out, in) arrays stacked along out (one weight: its
        transpose), for `key`: made now if there is none, or if it is stale."""
        if self._written_at != O.PARAMETER_WRITES[0]:
            self.clear()
        arrays = tuple(w.data for w in weights)
        entry = self._copies.get(key)
        if entry is None or len(entry[0]) != len(arrays) or any(a is not b for a, b in zip(entry[0], arrays)):
            stacked = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
            entry = self._copies[key] = (arrays, transposed(stacked))
        return entry[1]


def weights_of(model) -> DecodeWeights:
    """The model's DecodeWeights, made at the first call."""
    store = model.__dict__.get("_decode_weights")
    if store is None:
        store = DecodeWeights()
        object.__setattr__(model, "_decode_weights", store)
    return store
