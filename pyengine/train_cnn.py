"""`pyengine train cnn --model lenet|resnet|small`: convolutional networks on scikit-learn's digits.

The 8x8 grey digits (shipped inside scikit-learn), a held-out fifth for the test accuracy, SGD with
momentum under a cosine (per step) or step (per epoch) schedule, random shifts of the training
images by up to `shift` pixels (zeros shifted in), one training step captured on the first batch
and replayed on every batch after it (batch norm's running statistics update on each replay), a
progress bar, and checkpoints that a resumed run continues from with bit-identical losses.

A checkpoint is one safetensors file (pyengine.save): the weights and buffers under ``model.``, the
optimizer's state (momentum buffers), the scheduler's, the step, the losses so far, the sampler's
position (epoch, batch, this epoch's order and its generator's state: the shifts draw from it too),
pyengine's random state, the architecture and the recipe. It is written every
`checkpoint_interval` steps (default: every epoch) and at the end; Ctrl-C stops at the end of a
step and writes one.

`--model small` keeps the recipe `pyengine train cnn` has always run (models.CNN, 10 epochs, a
constant lr, no shifts, checkpoints/cnn_digits.safetensors); lenet and resnet default to
their own recipes (MODEL_DEFAULTS), which reach 0.985 test accuracy or more.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field

import numpy as np

import pyengine
from pyengine import functional as F
from pyengine import optim
from pyengine.data import load_digits
from pyengine.models import CNN, LeNet5, ResNet
from pyengine.train_state import (
    CheckpointError,
    from_json_state,
    json_state,
    load_run,
    progress_bar,
    sigint_stops,
    stop_requested,
)

__all__ = ["CNNTrainConfig", "train_cnn", "load_checkpoint", "model_from_checkpoint", "CheckpointError"]

MODELS = ("small", "lenet", "resnet")
SCHEDULES = ("cosine", "step", "none")

# Per-model recipe defaults (measured on this data: see tests/test_train_cnn.py).
MODEL_DEFAULTS = {
    "small": dict(epochs=10, lr=0.05, schedule="none", shift=0, weight_decay=1e-4),
    "lenet": dict(epochs=30, lr=0.1, schedule="cosine", shift=1, weight_decay=5e-4),
    "resnet": dict(epochs=10, lr=0.05, schedule="cosine", shift=1, weight_decay=5e-4),
}
# Options that do not change the computation: a run may resume with other values of them.
RUN_OPTIONS = ("checkpoint", "checkpoint_interval", "check_finite", "resume", "progress")


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
    validation: float = 0.0  # a fraction of the training part held out to choose a recipe by
    channels: tuple = (16, 32)  # small
    width: int = 16  # resnet: channels of the first stage (64 is ResNet-18's)
    blocks: tuple = (2, 2, 2, 2)  # resnet: basic blocks a stage
    checkpoint: str | None = field(default="default")  # "default": checkpoints/<model>_digits.safetensors
    checkpoint_interval: int = 0  # steps between checkpoints; 0: one an epoch
    check_finite: bool = False
    resume: bool = False
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
        if values["checkpoint_interval"] < 0 or not 0.0 <= values["validation"] < 0.9:
            raise ValueError("train cnn: needs checkpoint_interval >= 0 and 0 <= validation < 0.9")
        if values["checkpoint"] == "default":
            values["checkpoint"] = f"checkpoints/{'cnn' if self.model == 'small' else self.model}_digits.safetensors"
        return CNNTrainConfig(**values)

    def recipe(self) -> dict:
        """The options that decide the computation (JSON values), as a checkpoint records them."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if k not in RUN_OPTIONS}


def build_model(config: CNNTrainConfig):
    if config.model == "lenet":
        return LeNet5()
    if config.model == "resnet":
        widths = tuple(config.width * 2 ** i for i in range(len(config.blocks)))
        return ResNet(tuple(config.blocks), widths)
    return CNN(tuple(config.channels), 10)


def model_metadata(config: CNNTrainConfig) -> dict:
    """The architecture: what a checkpoint's weights need to load."""
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


class ShiftedBatches:
    """Shuffled mini-batches of exactly `batch_size` images (the remainder of an epoch is dropped, so
    one captured graph replays on all), shifted; one generator draws the epoch's order and the shifts.
    Its state (epoch, batch, order, generator) resumes the sequence exactly."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, shift: int, seed: int):
        self.x, self.y, self.batch_size, self.shift = x, y, batch_size, shift
        self.rng = np.random.default_rng(seed)
        self.batches_per_epoch = len(x) // batch_size
        self.epoch, self.batch, self.order = 0, 0, None  # batches of `epoch` done, its order

    def next(self) -> tuple:
        if self.order is None or self.batch == self.batches_per_epoch:
            if self.order is not None:
                self.epoch += 1
            self.order, self.batch = self.rng.permutation(len(self.x)), 0
        index = self.order[self.batch * self.batch_size:(self.batch + 1) * self.batch_size]
        self.batch += 1
        x = shifted(np.ascontiguousarray(self.x[index]), self.shift, self.rng)
        return x, np.ascontiguousarray(self.y[index])

    def state(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "rng": json_state(self.rng.bit_generator.state),
                "order": None if self.order is None else self.order.astype(np.int64)}

    def set_state(self, state: dict) -> None:
        order = state["order"]
        order = None if order is None else np.asarray(getattr(order, "data", order), np.int64)
        if order is not None and sorted(order.tolist()) != list(range(len(self.x))):
            raise ValueError(f"the saved data order is not a permutation of the {len(self.x)} training images")
        self.rng.bit_generator.state = from_json_state(state["rng"])
        self.epoch, self.batch, self.order = int(state["epoch"]), int(state["batch"]), order


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


@dataclass
class Run:
    """What a training run holds, and writes to its checkpoint."""

    config: CNNTrainConfig
    model: object
    optimizer: optim.SGD
    scheduler: object
    scheduler_every: int
    sampler: ShiftedBatches
    total_steps: int
    step: int = 0
    losses: list = field(default_factory=list)  # the training loss of every step so far

    def save(self, path: str, metrics: dict | None = None) -> None:
        pyengine.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                       "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
                       "step": self.step, "losses": list(self.losses), "sampler": self.sampler.state(),
                       "random": pyengine.random.get_rng_state(), "model_config": model_metadata(self.config),
                       "train_config": self.config.recipe(), "metrics": metrics or {}}, path)


def _split(config: CNNTrainConfig):
    """(x_train, y_train, x_eval, y_eval, eval name): the test fifth, or with `validation` a part of
    the training images held out (the test fifth then stays unseen)."""
    data = load_digits(seed=config.seed)
    if not config.validation:
        return data.x_train, data.y_train, data.x_test, data.y_test, "test"
    order = np.random.default_rng(config.seed + 1).permutation(len(data.x_train))
    held = order[:int(round(len(order) * config.validation))]
    kept = np.sort(order[len(held):])
    return (np.ascontiguousarray(data.x_train[kept]), data.y_train[kept],
            np.ascontiguousarray(data.x_train[held]), data.y_train[held], "validation")


def _new_run(config: CNNTrainConfig, x_train: np.ndarray, y_train: np.ndarray) -> Run:
    pyengine.manual_seed(config.seed)
    model = build_model(config)
    model.train()
    optimizer = optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    sampler = ShiftedBatches(x_train, y_train, config.batch_size, config.shift, config.seed)
    scheduler, every = _scheduler(optimizer, config, sampler.batches_per_epoch)
    return Run(config, model, optimizer, scheduler, every, sampler, config.epochs * sampler.batches_per_epoch)


def load_checkpoint(path: str) -> dict:
    """The saved dict of a `pyengine train cnn` checkpoint; CheckpointError (one line) for a missing
    file or a file that is not such a checkpoint."""
    saved = load_run(path, ("model", "model_config", "train_config", "sampler"), "`pyengine train cnn`")
    if not isinstance(saved["model_config"], dict) or "model" not in saved["model_config"]:
        raise CheckpointError(f"{path} is not a `pyengine train cnn` checkpoint (no model in its model_config)")
    return saved


def model_from_checkpoint(path: str):
    """The model of a `pyengine train cnn` checkpoint, rebuilt and loaded (in eval mode)."""
    saved = load_checkpoint(path)
    architecture = saved["model_config"]
    try:
        config = CNNTrainConfig(model=architecture["model"], channels=tuple(architecture["channels"]),
                                width=architecture["width"], blocks=tuple(architecture["blocks"]))
        model = build_model(config.resolved())
        model.load_state_dict(saved["model"])
    except (TypeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{path}: {error}") from None
    return model.eval()


def _resume(run: Run, path: str) -> None:
    """Load the checkpoint at `path` into `run`, after checking that it is a run of the same
    architecture and recipe (anything else could not continue with the same losses)."""
    saved = load_checkpoint(path)
    for what, expected, got in (("architecture", model_metadata(run.config), saved["model_config"]),
                                ("recipe", run.config.recipe(), saved["train_config"])):
        if got != expected:
            diff = ", ".join(f"{k} {got.get(k)} (now {v})" for k, v in expected.items() if got.get(k) != v)
            raise CheckpointError(f"{path} is a checkpoint of another {what}: {diff}")
    try:
        run.model.load_state_dict(saved["model"])
        run.optimizer.load_state_dict(saved["optimizer"])
        if run.scheduler is not None:
            run.scheduler.load_state_dict(saved["scheduler"])
        run.sampler.set_state(saved["sampler"])
        pyengine.random.set_rng_state(saved["random"])
    except (TypeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{path}: {str(error).splitlines()[0]}") from None
    run.step, run.losses = int(saved["step"]), [float(v) for v in saved["losses"]]


def train_cnn(config: CNNTrainConfig, on_step=None) -> dict:
    """Train the configured model; returns the metrics (and the checkpoint written).

    With check_finite, a replay that writes inf or NaN raises pyengine.graph.NonFiniteError before
    its update (the checkpoint on disk stays the last good one). Ctrl-C (or a KeyboardInterrupt
    raised by `on_step(step, loss)`) stops at the end of the current step, saves a checkpoint
    there and returns with "interrupted": True."""
    config = config.resolved()
    with sigint_stops() as stop:  # from here on, Ctrl-C ends the run at a step boundary
        x_train, y_train, x_eval, y_eval, eval_name = _split(config)
        run = _new_run(config, x_train, y_train)
        if config.resume:
            if not config.checkpoint:
                raise CheckpointError("--resume needs a --checkpoint to resume from")
            _resume(run, config.checkpoint)
        progress = _progress(config, run)
        try:
            interrupted = _loop(run, progress, stop, on_step)
        finally:
            progress.close()
    metrics = {"interrupted": interrupted, "steps": run.step, "parameters": run.model.num_parameters(),
               "final_loss": run.losses[-1] if run.losses else float("nan"), "losses": list(run.losses),
               "evaluated_on": eval_name}
    if not interrupted:
        metrics.update(train_accuracy=accuracy(run.model, x_train, y_train),
                       **{f"{eval_name}_accuracy": accuracy(run.model, x_eval, y_eval)})
    if config.checkpoint:
        run.save(config.checkpoint, {k: v for k, v in metrics.items() if k.endswith("accuracy")})
        metrics["checkpoint"] = config.checkpoint
    return metrics


def _loop(run: Run, progress, stop: threading.Event, on_step) -> bool:
    """Replay the captured step until the last one; True when stopped early. A step always
    completes: a signal only sets `stop`, read between steps, so a checkpoint never holds half an
    update."""
    config, graph = run.config, None
    interval = config.checkpoint_interval or run.sampler.batches_per_epoch
    while run.step < run.total_steps:
        x, y = run.sampler.next()
        if graph is None:  # capture records the ops; it neither updates nor counts a step
            graph = pyengine.capture(lambda xb, yb: F.cross_entropy(run.model(xb), yb), x, y,
                                     optimizer=run.optimizer, check_finite=config.check_finite)
        loss = graph.run(x, y).item()
        run.step += 1
        run.losses.append(loss)
        if run.scheduler is not None and run.step % run.scheduler_every == 0:
            run.scheduler.step()
        progress.update(1)
        progress.set_postfix(epoch=run.sampler.epoch + 1, loss=f"{loss:.4f}")
        if config.checkpoint and run.step % interval == 0 and run.step < run.total_steps:
            run.save(config.checkpoint)
            progress.write(f"step {run.step}: loss {loss:.4f}, checkpoint saved")
        if stop_requested(stop, on_step, run.step, loss) and run.step < run.total_steps:
            return True
    return False


def _progress(config: CNNTrainConfig, run: Run):
    return progress_bar(run.total_steps, run.step, config.progress, f"train cnn {config.model}")


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
    parser.add_argument("--validation", type=float, default=defaults.validation,
                        help="hold out this fraction of the training images and report the accuracy on them "
                             "instead of the test fifth's, to choose a recipe by (default: 0)")
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
                        help="safetensors file to write and to --resume from "
                             "(default: checkpoints/<cnn|lenet|resnet>_digits.safetensors)")
    parser.add_argument("--checkpoint-interval", type=int, default=defaults.checkpoint_interval,
                        help="steps between checkpoints (default: 0, one an epoch)")
    parser.add_argument("--no-checkpoint", action="store_true", help="write no checkpoint (default: write one)")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --checkpoint")
    parser.add_argument("--check-finite", action="store_true",
                        help="stop at the first inf or NaN, naming the graph step that wrote it")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (default: shown)")
    parser.set_defaults(run=run)


def run(args) -> int:
    import sys

    from pyengine.graph import NonFiniteError

    if args.threads:
        pyengine.set_num_threads(args.threads)
    checkpoint = None if args.no_checkpoint else (args.checkpoint or "default")
    config = CNNTrainConfig(model=args.model, epochs=args.epochs, lr=args.lr, schedule=args.schedule,
                            shift=args.shift, batch_size=args.batch_size, momentum=args.momentum,
                            weight_decay=args.weight_decay, seed=args.seed, validation=args.validation,
                            channels=tuple(args.channels), width=args.width, blocks=tuple(args.blocks),
                            checkpoint=checkpoint, checkpoint_interval=args.checkpoint_interval,
                            check_finite=args.check_finite, resume=args.resume, progress=not args.quiet)
    try:
        metrics = train_cnn(config)
    except NonFiniteError as error:
        kept = f"; the last good checkpoint is {config.resolved().checkpoint}" if checkpoint else ""
        print(f"pyengine train cnn: {error}{kept}", file=sys.stderr)
        return 3
    except (CheckpointError, ValueError) as error:
        print(f"pyengine train cnn: {error}", file=sys.stderr)
        return 2
    if metrics["interrupted"]:
        print(f"interrupted at step {metrics['steps']}" +
              (f"; checkpoint: {metrics['checkpoint']} (continue with --resume)" if "checkpoint" in metrics else ""))
        return 130
    print(f"model: {args.model}, {metrics['parameters']} parameters, {metrics['steps']} steps")
    print(f"final loss: {metrics['final_loss']:.4f}")
    print(f"train accuracy: {metrics['train_accuracy']:.4f}")
    if "checkpoint" in metrics:
        print(f"checkpoint: {metrics['checkpoint']}")
    name = metrics["evaluated_on"]
    print(f"{name} accuracy: {metrics[f'{name}_accuracy']:.4f}")
    return 0

