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

A step of a few rows multiplies them by each copy with ``kernels.matmul``, whose few-row path
streams a large weight once for up to 32 rows (matmul.cpp's streams_b).
"""

from __future__ import annotations

import numpy as np

from pyengine import ops as O

__all__ = ["DecodeWeights", "weights_of", "transposed"]


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
