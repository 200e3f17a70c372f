"""`pyengine train cnn --model lenet|resnet|small`: convolutional networks on scikit-learn's digits.

The 8x8 grey digits (shipped inside scikit-learn), a held-out fifth for the test accuracy, SGD with
momentum under a cosine (per step) or step (per epoch) schedule, random shifts of the training
images by up to `shift` pixels (zeros shifted in), one training step captured on the first batch
and replayed on every batch after it (batch norm's running statistics update on each replay), a
progress bar, and a safetensors checkpoint of the weights and buffers with the model's settings.

`--model small` keeps the recipe `pyengine train cnn` has always run (models.CNN, 10 epochs, a
constant lr, no shifts, checkpoints/cnn_digits.safetensors); lenet and resnet default to
their own recipes (MODEL_DEFAULTS), which reach 0.985 test accuracy or more.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import pyengine
from pyengine import functional as F
from pyengine import io, optim
from pyengine.data import batches, load_digits
from pyengine.models import CNN, LeNet5, ResNet

MODELS = ("small", "lenet", "resnet")
SCHEDULES = ("cosine", "step", "none")

# Per-model recipe defaults (measured on this data: see tests/test_train_cnn.py).
MODEL_DEFAULTS = {
    "small": dict(epochs=10, lr=0.05, schedule="none", shift=0, weight_decay=1e-4),
    "lenet": dict(epochs=30, lr=0.1, schedule="cosine", shift=1, weight_decay=5e-4),
    "resnet": dict(epochs=10, lr=0.05, schedule="cosine", shift=1, weight_decay=5e-4),
}


@dataclass
class CNNTrainConfig:
    model: str = "small"
    epochs: int | None = None  # None: MODEL_DEFAULTS[model]
    lr: float | None = None
    schedule: str | None = None
    shift: int | None = None
    batch_size: int = 32
    momentum: float = 0.9
    weight_decay: float | None = None
    seed: int = 0
    channels: tuple = (16, 32)  # small
    width: int = 16  # resnet: channels of the first stage (64 is ResNet-18's)
    blocks: tuple = (2, 2, 2, 2)  # resnet: basic blocks a stage
    checkpoint: str | None = field(default="default")  # "default": checkpoints/<model>_digits.safetensors
    progress: bool = True

    def resolved(self) -> CNNTrainConfig:
        """A copy with every None taken from MODEL_DEFAULTS, checked."""
        if self.model not in MODELS:
            raise ValueError(f"train cnn: model must be one of {', '.join(MODELS)}, got {self.model!r}")
        values = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for key, default in MODEL_DEFAULTS[self.model].items():
            if values[key] is None:
                values[key] = default
        if values["schedule"] not in SCHEDULES:
            raise ValueError(f"train cnn: schedule must be one of {', '.join(SCHEDULES)}, got {values['schedule']!r}")
        if values["shift"] < 0 or values["epochs"] < 1 or values["batch_size"] < 2:
            raise ValueError("train cnn: needs shift >= 0, epochs >= 1 and batch_size >= 2")
        if values["checkpoint"] == "default":
            values["checkpoint"] = f"checkpoints/{'cnn' if self.model == 'small' else self.model}_digits.safetensors"
        return CNNTrainConfig(**values)


def build_model(config: CNNTrainConfig):
    if config.model == "lenet":
        return LeNet5()
    if config.model == "resnet":
        widths = tuple(config.width * 2 ** i for i in range(len(config.blocks)))
        return ResNet(tuple(config.blocks), widths)
    return CNN(tuple(config.channels), 10)


def model_metadata(config: CNNTrainConfig) -> dict:
    return {"model": config.model, "channels": list(config.channels), "width": config.width,
            "blocks": list(config.blocks)}


def shifted(x: np.ndarray, shift: int, rng: np.random.Generator, size: int = 8) -> np.ndarray:
    """Each (size * size) row of pixels moved by a random (dy, dx) in [-shift, shift]^2, zeros
    shifted in."""
    if shift == 0:
        return x
    images = x.reshape(-1, size, size)
    out = np.zeros_like(images)
    moves = rng.integers(-shift, shift + 1, size=(len(images), 2))
    for i, (dy, dx) in enumerate(moves):
        src = images[i, max(0, -dy):size - max(0, dy), max(0, -dx):size - max(0, dx)]
        out[i, max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
    return out.reshape(x.shape)


def accuracy(model, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    """Accuracy in eval mode (batch norm on its running statistics); the mode is restored."""
    was_training = model.training
    model.eval()
    correct = 0
    with pyengine.no_grad():
        for start in range(0, len(x), batch_size):
            logits = model(pyengine.Tensor(np.ascontiguousarray(x[start:start + batch_size]))).numpy()
            correct += int((logits.argmax(axis=1) == y[start:start + batch_size]).sum())
    model.train(was_training)
    return correct / len(x)


def _scheduler(optimizer, config: CNNTrainConfig, steps_per_epoch: int):
    """(scheduler, steps per scheduler step): cosine steps every batch, step every epoch."""
    if config.schedule == "cosine":
        return optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch), 1
    if config.schedule == "step":
        step_size = max(1, config.epochs // 3)
        return optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=0.1), steps_per_epoch
    return None, 0


def train_cnn(config: CNNTrainConfig) -> dict:
    """Train the configured model; returns the metrics (and the checkpoint written)."""
    from tqdm import tqdm

    config = config.resolved()
    pyengine.manual_seed(config.seed)
    data = load_digits(seed=config.seed)
    model = build_model(config)
    model.train()
    optimizer = optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    steps_per_epoch = len(data.x_train) // config.batch_size
    scheduler, every = _scheduler(optimizer, config, steps_per_epoch)
    rng = np.random.default_rng(config.seed)
    step, done, loss = None, 0, float("nan")
    progress = tqdm(total=config.epochs * steps_per_epoch, disable=not config.progress, unit="step",
                    desc=f"train cnn {config.model}")
    for epoch in range(config.epochs):
        for x, y in batches(data.x_train, data.y_train, config.batch_size, rng):
            x = shifted(x, config.shift, rng)
            if step is None:
                step = pyengine.capture(lambda xb, yb: F.cross_entropy(model(xb), yb), x, y, optimizer=optimizer)
            loss = step.run(x, y).item()
            done += 1
            if scheduler is not None and done % every == 0:
                scheduler.step()
            progress.update(1)
            progress.set_postfix(epoch=epoch + 1, loss=f"{loss:.4f}")
    progress.close()
    metrics = {"train_accuracy": accuracy(model, data.x_train, data.y_train),
               "test_accuracy": accuracy(model, data.x_test, data.y_test),
               "final_loss": loss, "steps": done, "parameters": model.num_parameters()}
    if config.checkpoint:
        metadata = {**model_metadata(config), "test_accuracy": metrics["test_accuracy"]}
        io.save(model, config.checkpoint, metadata=metadata)
        metrics["checkpoint"] = config.checkpoint
    return metrics


# ---------------------------------------------------------------- the command line


def add_parser(models) -> None:
    """Registers `pyengine train cnn` on the `pyengine train` subparsers."""
    defaults = CNNTrainConfig()

    def per_model(key: str) -> str:
        return ", ".join(f"{name} {MODEL_DEFAULTS[name][key]}" for name in MODELS)

    parser = models.add_parser("cnn", help="a CNN (small, LeNet-5 or ResNet) on the 8x8 digits (no download)",
                               description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=MODELS, default=defaults.model,
                        help=f"the network (default: {defaults.model}: two 3x3 convolutions)")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"passes over the data (default: {per_model('epochs')})")
    parser.add_argument("--lr", type=float, default=None, help=f"initial learning rate (default: {per_model('lr')})")
    parser.add_argument("--schedule", choices=SCHEDULES, default=None,
                        help=f"lr schedule: cosine to 0 over the run, or x0.1 every third of it (default: "
                             f"{per_model('schedule')})")
    parser.add_argument("--shift", type=int, default=None,
                        help=f"random shift of training images, in pixels (default: {per_model('shift')})")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help=f"images a step (default: {defaults.batch_size})")
    parser.add_argument("--momentum", type=float, default=defaults.momentum,
                        help=f"SGD momentum (default: {defaults.momentum})")
    parser.add_argument("--weight-decay", type=float, default=None,
                        help=f"SGD weight decay (default: {per_model('weight_decay')})")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help=f"data split and init (default: {defaults.seed})")
    parser.add_argument("--channels", type=int, nargs=2, default=list(defaults.channels),
                        help="small: output channels of the two convolutions "
                             f"(default: {' '.join(map(str, defaults.channels))})")
    parser.add_argument("--width", type=int, default=defaults.width,
                        help=f"resnet: channels of the first stage, doubled each stage (default: {defaults.width}; "
                             f"ResNet-18: 64)")
    parser.add_argument("--blocks", type=int, nargs="+", default=list(defaults.blocks),
                        help=f"resnet: basic blocks a stage (default: {' '.join(map(str, defaults.blocks))})")
    parser.add_argument("--threads", type=int, default=0, help="kernel threads (default: 0, OpenMP's)")
    parser.add_argument("--checkpoint", default=None,
                        help="safetensors file to write (default: checkpoints/<cnn|lenet|resnet>_digits.safetensors)")
    parser.add_argument("--no-checkpoint", action="store_true", help="write no checkpoint (default: write one)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (default: shown)")
    parser.set_defaults(run=run)


def run(args) -> int:
    if args.threads:
        pyengine.set_num_threads(args.threads)
    checkpoint = None if args.no_checkpoint else (args.checkpoint or "default")
    config = CNNTrainConfig(model=args.model, epochs=args.epochs, lr=args.lr, schedule=args.schedule,
                            shift=args.shift, batch_size=args.batch_size, momentum=args.momentum,
                            weight_decay=args.weight_decay, seed=args.seed, channels=tuple(args.channels),
                            width=args.width, blocks=tuple(args.blocks), checkpoint=checkpoint,
                            progress=not args.quiet)
    metrics = train_cnn(config)
    print(f"model: {args.model}, {metrics['parameters']} parameters, {metrics['steps']} steps")
    print(f"final loss: {metrics['final_loss']:.4f}")
    print(f"train accuracy: {metrics['train_accuracy']:.4f}")
    if "checkpoint" in metrics:
        print(f"checkpoint: {metrics['checkpoint']}")
    print(f"test accuracy: {metrics['test_accuracy']:.4f}")
    return 0
