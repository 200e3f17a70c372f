"""scikit-learn's handwritten digits (8x8 images, 10 classes), shipped with scikit-learn."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Split:
    x_train: np.ndarray  # (n_train, 64) float32 in [0, 1]
    y_train: np.ndarray  # (n_train,) int64
    x_test: np.ndarray  # (n_test, 64) float32
    y_test: np.ndarray  # (n_test,) int64


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Split:
    """The 1797 digits, pixels scaled to [0, 1], shuffled and split with `seed`."""
    from sklearn.datasets import load_digits as sklearn_digits

    data = sklearn_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return Split(np.ascontiguousarray(x[train]), y[train], np.ascontiguousarray(x[test]), y[test])


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, rng: np.random.Generator):
    """Shuffled (x, y) mini-batches of exactly `batch_size` rows (the remainder
    is dropped, so a captured graph of one batch shape replays on all)."""
    order = rng.permutation(len(x))
    for start in range(0, len(x) - batch_size + 1, batch_size):
        index = order[start:start + batch_size]
        yield np.ascontiguousarray(x[index]), np.ascontiguousarray(y[index])
