"""The MLP recipe behind `pyengine train mlp` (`train cnn` is in train_cnn.py, `train gpt` in train_gpt.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import pyengine
from pyengine import functional as F
from pyengine import io, optim
from pyengine.data import batches, load_digits
from pyengine.models import MLP


@dataclass
class TrainConfig:
    """Options every training recipe takes."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    seed: int = 0
    checkpoint: str | None = None
    progress: bool = True


@dataclass
class MLPConfig(TrainConfig):
    epochs: int = 30
    hidden: tuple = (128, 64)
    checkpoint: str | None = "checkpoints/mlp_digits.safetensors"


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    with pyengine.no_grad():
        logits = model(pyengine.Tensor(x)).numpy()
    return float((logits.argmax(axis=1) == y).mean())


def train_mlp(config: MLPConfig) -> dict:
    """Train an MLP on scikit-learn's digits with a captured training step.

    The first batch's step is captured into a static graph; every step after
    replays it (no allocation, planned memory). Returns the final metrics.
    """
    pyengine.manual_seed(config.seed)
    data = load_digits(seed=config.seed)
    model = MLP(data.x_train.shape[1], list(config.hidden), 10)
    return _fit(model, data, config, "mlp", {"model": "MLP", "hidden": list(config.hidden)})


def _fit(model, data, config, name: str, metadata: dict) -> dict:
    """SGD over the training split, the first batch's step captured and every
    step replayed; then the accuracies and, when configured, a checkpoint."""
    from tqdm import tqdm

    optimizer = optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    rng = np.random.default_rng(config.seed)
    steps_per_epoch = len(data.x_train) // config.batch_size
    step = None
    progress = tqdm(total=config.epochs * steps_per_epoch, disable=not config.progress,
                    unit="step", desc=f"train {name}")
    for epoch in range(config.epochs):
        for x, y in batches(data.x_train, data.y_train, config.batch_size, rng):
            if step is None:
                step = pyengine.capture(lambda xb, yb: F.cross_entropy(model(xb), yb), x, y,
                                        optimizer=optimizer)
            loss = step.run(x, y).item()
            progress.update(1)
            progress.set_postfix(epoch=epoch + 1, loss=f"{loss:.4f}")
    progress.close()
    metrics = {"train_accuracy": accuracy(model, data.x_train, data.y_train),
               "test_accuracy": accuracy(model, data.x_test, data.y_test),
               "final_loss": loss, "steps": config.epochs * steps_per_epoch}
    if config.checkpoint:
        io.save(model, config.checkpoint,
                metadata={**metadata, "test_accuracy": metrics["test_accuracy"]})
        metrics["checkpoint"] = config.checkpoint
    return metrics
