"""`pyengine train gpt`: a character-level GPT on Python's standard-library
source (or any text file), with the whole training step captured once and
replayed, AdamW with a warm-up and cosine schedule, gradient clipping,
validation at intervals and checkpoints that a resumed run continues from
with bit-identical losses.

A checkpoint is one safetensors file (pyengine.save): the weights under
``model.`` with Hugging Face's GPT-2 names, the optimizer's state, the step,
the data sampler's generator state (the data position), pyengine's random
state (dropout streams), the model configuration and the vocabulary.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass, fields

import numpy as np

import pyengine
from pyengine import optim, train_state
from pyengine.data.text import CharVocab, WindowSampler, load_text_corpus
from pyengine.models.gpt import GPT, GPTConfig
from pyengine.train_state import CheckpointError

__all__ = ["GPTTrainConfig", "train_gpt", "load_checkpoint", "CheckpointError"]

MODEL_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "dropout", "bias")


@dataclass
class GPTTrainConfig:
    """Options of `pyengine train gpt` (the command line shows the defaults)."""

    data: str | None = None  # a text file; None: the standard library's source
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128
    dropout: float = 0.0
    bias: bool = True
    batch_size: int = 32
    max_steps: int = 2000
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta2: float = 0.99
    grad_clip: float = 1.0
    eval_interval: int = 250
    eval_iters: int = 20
    seed: int = 1337
    check_finite: bool = False
    checkpoint: str | None = "checkpoints/gpt.safetensors"
    resume: bool = False
    progress: bool = True


def learning_rate(config: GPTTrainConfig, step: int) -> float:
    """Linear warm-up to lr, then a cosine decay to min_lr at max_steps."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.max_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return config.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.lr - config.min_lr)


def _param_groups(model) -> list:
    """Weight decay on the matrices (and embeddings), none on biases and norms (as nanoGPT)."""
    params = [p for _, p in model.named_parameters()]
    return [{"params": [p for p in params if p.ndim >= 2]},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def _model_config(config: GPTTrainConfig, vocab_size: int) -> GPTConfig:
    return GPTConfig(vocab_size=vocab_size, **{name: getattr(config, name) for name in MODEL_FIELDS})


@dataclass
class Run:
    """What a training run holds: the model, its optimizer, the data."""

    config: GPTTrainConfig
    vocab: CharVocab
    model: GPT
    optimizer: optim.AdamW
    sampler: WindowSampler
    val: np.ndarray
    step: int = 0

    def save(self, path: str) -> None:
        pyengine.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                       "step": self.step, "sampler": train_state.json_state(self.sampler.state()),
                       "random": pyengine.random.get_rng_state(),
                       "model_config": self.model.config.to_dict(), "vocab": "".join(self.vocab.chars),
                       "train_config": {k: v for k, v in asdict(self.config).items() if k != "resume"}}, path)


def load_checkpoint(path: str) -> dict:
    """The saved dict of a `pyengine train gpt` checkpoint; CheckpointError
    (one line) for a missing file or a file that is not such a checkpoint."""
    return train_state.load_run(path, ("model", "model_config", "vocab"), "pyengine GPT")


def model_from_checkpoint(saved: dict, path: str) -> tuple:
    """(model, vocab) rebuilt from a checkpoint's configuration and weights."""
    try:
        model = GPT(GPTConfig(**saved["model_config"]))
        model.load_state_dict(saved["model"])
    except (TypeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{path}: {error}") from None
    return model, CharVocab(saved["vocab"])


def _new_run(config: GPTTrainConfig, corpus) -> Run:
    pyengine.manual_seed(config.seed)
    model = GPT(_model_config(config, len(corpus.vocab)))
    optimizer = optim.AdamW(_param_groups(model), lr=config.lr, betas=(0.9, config.beta2),
                            weight_decay=config.weight_decay, max_grad_norm=config.grad_clip or None)
    sampler = WindowSampler(corpus.train, config.block_size, config.batch_size, config.seed)
    return Run(config, corpus.vocab, model, optimizer, sampler, corpus.val)


def _resume(run: Run, path: str) -> None:
    """Load the checkpoint at `path` into `run`, after checking that it is a
    run of the same model on the same vocabulary."""
    saved = load_checkpoint(path)
    expected = run.model.config.to_dict()
    if saved["model_config"] != expected:
        diff = ", ".join(f"{k} {saved['model_config'].get(k)} (now {v})" for k, v in expected.items()
                         if saved["model_config"].get(k) != v)
        raise CheckpointError(f"{path} is a checkpoint of another configuration: {diff}")
    if saved["vocab"] != "".join(run.vocab.chars):
        raise CheckpointError(f"{path} was trained on another vocabulary (another text)")
    run.model.load_state_dict(saved["model"])
    run.optimizer.load_state_dict(saved["optimizer"])
    run.sampler.set_state(train_state.from_json_state(saved["sampler"]))
    pyengine.random.set_rng_state(saved["random"])
    run.step = int(saved["step"])


def evaluate(run: Run) -> float:
    """Mean validation loss over eval_iters fixed batches (the same batches
    at every evaluation, so the figures compare), dropout off."""
    config = run.config
    sampler = WindowSampler(run.val, config.block_size, config.batch_size, seed=config.seed + 1)
    run.model.eval()
    total = 0.0
    with pyengine.no_grad():
        for _ in range(config.eval_iters):
            x, y = sampler.next()
            total += run.model(x, y)[1].item()
    run.model.train()
    return total / config.eval_iters


def _capture_step(run: Run):
    """The training step captured on a batch of shape only (zeros): capture
    records the ops, it does not update the weights."""
    shape = (run.config.batch_size, run.config.block_size)
    example = np.zeros(shape, np.int64)
    return pyengine.capture(lambda xb, yb: run.model(xb, yb)[1], example, example, optimizer=run.optimizer,
                            check_finite=run.config.check_finite)


def train_gpt(config: GPTTrainConfig, log=print, on_step=None) -> dict:
    """Train as configured (with check_finite, a replay that writes inf or
    NaN raises pyengine.graph.NonFiniteError before its update, and the
    checkpoint on disk stays the last good one); returns {"val_loss", "train_loss", "losses",
    "steps", "checkpoint", ...}, "losses" holding this invocation's training
    losses by step. Ctrl-C (or a KeyboardInterrupt raised by
    `on_step(step, loss)`) stops at the end of the current step, saves a
    checkpoint there and returns with "interrupted": True."""
    with train_state.sigint_stops() as stop:  # from here on, Ctrl-C ends the run at a step boundary
        corpus = load_text_corpus(config.data)
        run = _new_run(config, corpus)
        if config.resume:
            if not config.checkpoint:
                raise CheckpointError("--resume needs a --checkpoint to resume from")
            _resume(run, config.checkpoint)
        log(f"data: {corpus.source}: {corpus.characters:,} characters, {len(corpus.vocab)} distinct; "
            f"model: {run.model.num_parameters():,} parameters")
        graph = _capture_step(run)
        metrics = {"train_loss": float("nan"), "val_loss": float("nan"), "interrupted": False, "losses": {}}
        started = time.perf_counter()
        progress = _progress(config, run.step)
        try:
            metrics["interrupted"] = _loop(run, graph, metrics, progress, stop, on_step)
        finally:
            progress.close()
    if metrics["interrupted"] and config.checkpoint:
        run.save(config.checkpoint)
    if not metrics["interrupted"] and math.isnan(metrics["val_loss"]):
        metrics["val_loss"] = evaluate(run)  # resumed at max_steps: nothing left to train
    metrics.update(steps=run.step, checkpoint=config.checkpoint, seconds=time.perf_counter() - started)
    return metrics


def _loop(run: Run, graph, metrics: dict, progress, stop: threading.Event, on_step) -> bool:
    """Replay the captured step until max_steps; True when stopped early.
    A step always completes: a signal only sets `stop`, read between steps,
    so a checkpoint never holds half an update."""
    config = run.config
    tokens_per_step = config.batch_size * config.block_size
    started, first_step = time.perf_counter(), run.step
    while run.step < config.max_steps:
        run.optimizer.lr = learning_rate(config, run.step)
        x, y = run.sampler.next()
        loss = metrics["train_loss"] = graph.run(x, y).item()
        run.step += 1
        metrics["losses"][run.step] = loss
        rate = (run.step - first_step) * tokens_per_step / (time.perf_counter() - started)
        progress.update(1)
        progress.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rate:,.0f}")
        if run.step % config.eval_interval == 0 or run.step == config.max_steps:
            metrics["val_loss"] = evaluate(run)
            progress.write(f"step {run.step}: train loss {loss:.4f}, val loss {metrics['val_loss']:.4f}")
            if config.checkpoint:
                run.save(config.checkpoint)
        if train_state.stop_requested(stop, on_step, run.step, loss) and run.step < config.max_steps:
            return True
    return False


def _progress(config: GPTTrainConfig, start: int):
    return train_state.progress_bar(config.max_steps, start, config.progress, "train gpt")


def config_from_args(args) -> GPTTrainConfig:
    """The config from parsed command-line arguments named like its fields."""
    values = {f.name: getattr(args, f.name) for f in fields(GPTTrainConfig) if hasattr(args, f.name)}
    if getattr(args, "no_checkpoint", False):
        values["checkpoint"] = None
    return GPTTrainConfig(**values)

