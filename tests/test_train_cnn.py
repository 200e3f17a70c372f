"""`pyengine train cnn`: exact resume after an interruption, Ctrl-C or SIGKILL (model, momentum
buffers, scheduler, data order and position, the shifts' generator, batch norm's running
statistics, the step), the checkpoint's errors and the NaN guard."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import pyengine
from pyengine.cli import main
from pyengine.models import ResNet
from pyengine.train_cnn import CheckpointError, CNNTrainConfig, load_checkpoint, model_from_checkpoint, train_cnn

# A two-block ResNet (batch norm, projection shortcut), shifts and a cosine schedule: every kind of
# state a run carries; 2 epochs of 44 steps, a checkpoint every 10.
TINY = ["--model", "resnet", "--width", "4", "--blocks", "1", "1", "--epochs", "2", "--schedule", "cosine",
        "--shift", "1", "--checkpoint-interval", "10", "--quiet"]


def tiny_config(tmp_path, **changes) -> CNNTrainConfig:
    config = CNNTrainConfig(model="resnet", width=4, blocks=(1, 1), epochs=2, schedule="cosine", shift=1,
                            checkpoint_interval=10, progress=False, checkpoint=str(tmp_path / "cnn.safetensors"))
    return dataclasses.replace(config, **changes)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one kernel thread is the fastest, on a loaded machine by far."""
    before = pyengine.get_num_threads()
    pyengine.set_num_threads(1)
    yield
    pyengine.set_num_threads(before)


@pytest.fixture(scope="module")
def whole(tmp_path_factory, one_thread):
    """The uninterrupted run: its metrics and its final checkpoint."""
    folder = tmp_path_factory.mktemp("whole")
    metrics = train_cnn(tiny_config(folder))
    return metrics, load_checkpoint(metrics["checkpoint"])


def assert_same_weights(expected: dict, got: dict) -> None:
    assert list(got) == list(expected)
    for name, value in expected.items():
        assert np.array_equal(got[name].numpy(), value.numpy()), name


def test_training_is_deterministic(tmp_path, whole):
    again = train_cnn(tiny_config(tmp_path, checkpoint=None))
    assert again["losses"] == whole[0]["losses"] and len(again["losses"]) == 88
    assert again["test_accuracy"] == whole[0]["test_accuracy"]


@pytest.mark.parametrize("stop_at", [13, 44, 50], ids=["mid-epoch", "end-of-epoch", "second-epoch"])
def test_interrupted_run_resumes_with_bit_identical_losses_and_weights(tmp_path, whole, stop_at):
    def interrupt(step, loss):
        if step == stop_at:
            raise KeyboardInterrupt

    first = train_cnn(tiny_config(tmp_path), on_step=interrupt)
    assert first["interrupted"] and first["steps"] == stop_at and "test_accuracy" not in first
    rest = train_cnn(tiny_config(tmp_path, resume=True))
    assert not rest["interrupted"] and rest["steps"] == 88
    assert rest["losses"] == whole[0]["losses"]  # the resumed run's history holds the first part's losses
    assert rest["test_accuracy"] == whole[0]["test_accuracy"]
    expected = whole[1]
    got = load_checkpoint(tiny_config(tmp_path).checkpoint)
    assert_same_weights(expected["model"], got["model"])  # batch norm's running statistics included
    for index, state in expected["optimizer"]["state"].items():
        assert np.array_equal(got["optimizer"]["state"][index]["momentum_buffer"].numpy(),
                              state["momentum_buffer"].numpy())


def test_resuming_a_finished_run_trains_no_more(tmp_path):
    whole = train_cnn(tiny_config(tmp_path, epochs=1))
    again = train_cnn(tiny_config(tmp_path, epochs=1, resume=True))
    assert again["losses"] == whole["losses"] and again["test_accuracy"] == whole["test_accuracy"]


def test_the_checkpoint_rebuilds_its_model(tmp_path):
    train_cnn(tiny_config(tmp_path, epochs=1))
    model = model_from_checkpoint(tiny_config(tmp_path).checkpoint)
    assert isinstance(model, ResNet) and not model.training and model.fc.in_features == 8


def test_resume_refuses_another_architecture_or_recipe_and_foreign_files(tmp_path, capsys):
    train_cnn(tiny_config(tmp_path))
    with pytest.raises(CheckpointError, match=r"another architecture: model resnet \(now lenet\)"):
        train_cnn(tiny_config(tmp_path, model="lenet", resume=True))
    with pytest.raises(CheckpointError, match=r"another architecture: width 4 \(now 8\)"):
        train_cnn(tiny_config(tmp_path, width=8, resume=True))
    with pytest.raises(CheckpointError, match=r"another recipe: lr 0.05 \(now 0.1\)$"):
        train_cnn(tiny_config(tmp_path, lr=0.1, resume=True))
    checkpoint = tiny_config(tmp_path).checkpoint
    assert main(["train", "cnn", *TINY, "--model", "lenet", "--checkpoint", checkpoint, "--resume"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "another architecture" in err
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    for path in (tmp_path / "junk.safetensors", tmp_path / "missing.safetensors"):
        assert main(["train", "cnn", *TINY, "--checkpoint", str(path), "--resume"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and path.name in err
    gpt_like = tmp_path / "gpt.safetensors"
    pyengine.save({"model": {"w": np.zeros(2, np.float32)}, "vocab": "ab"}, gpt_like)
    with pytest.raises(CheckpointError, match="not a `pyengine train cnn` checkpoint"):
        model_from_checkpoint(str(gpt_like))


def _command(checkpoint) -> list:
    """The child's command line, at this process's thread count (the bits may depend on it)."""
    return [sys.executable, "-m", "pyengine.cli", "train", "cnn", *TINY, "--checkpoint", str(checkpoint),
            "--threads", str(pyengine.get_num_threads())]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigint_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    checkpoint = tmp_path / "int.safetensors"
    child = subprocess.Popen([*_command(checkpoint), "--epochs", "1000"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=tmp_path)
    assert "checkpoint saved" in child.stdout.readline()  # training has started
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert "interrupted at step" in out and "--resume" in out
    step = int(out.split("interrupted at step ")[1].split(";")[0])
    assert int(load_checkpoint(str(checkpoint))["step"]) == step >= 10


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("saves", [1, 4], ids=["at-first-checkpoint", "after-4-checkpoints"])
def test_sigkill_then_resume_ends_with_the_losses_and_weights_of_an_uninterrupted_run(tmp_path, whole, saves):
    killed = tmp_path / "killed.safetensors"
    child = subprocess.Popen(_command(killed), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    # The moment: right after the child reports its `saves`-th completed checkpoint (no clock).
    for _ in range(saves):
        assert "checkpoint saved" in child.stdout.readline()
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    child.stdout.close()
    assert child.returncode == -signal.SIGKILL, "the run ended before the kill: make it longer"
    step = int(load_checkpoint(str(killed))["step"])  # what the kill left: a whole checkpoint
    assert 10 * saves <= step < 88
    assert main(["train", "cnn", *TINY, "--checkpoint", str(killed), "--resume"]) == 0
    expected, got = whole[1], load_checkpoint(str(killed))
    assert int(got["step"]) == 88 and got["losses"] == expected["losses"]
    assert got["metrics"] == expected["metrics"]
    assert_same_weights(expected["model"], got["model"])


def test_check_finite_stops_at_the_first_nan_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    import pyengine.train_cnn as T

    calls, shifted = [], T.shifted

    def poisoned(x, shift, rng, size=8):
        calls.append(1)
        out = shifted(x, shift, rng, size)
        return np.full_like(out, np.nan) if len(calls) == 25 else out

    monkeypatch.setattr(T, "shifted", poisoned)
    checkpoint = str(tmp_path / "nan.safetensors")
    assert main(["train", "cnn", *TINY, "--checkpoint", checkpoint, "--check-finite"]) == 3  # step 25's batch
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "non-finite" in err and "last good checkpoint" in err
    saved = load_checkpoint(checkpoint)
    assert int(saved["step"]) == 20
    assert all(np.isfinite(v.numpy()).all() for v in saved["model"].values())


def test_validation_holds_out_part_of_the_training_images(tmp_path, capsys):
    assert main(["train", "cnn", *TINY, "--epochs", "1", "--validation", "0.2", "--no-checkpoint"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("validation accuracy: 0.")
    metrics = train_cnn(tiny_config(tmp_path, epochs=1, validation=0.2, checkpoint=None))
    assert metrics["steps"] == (1437 - 287) // 32 and "test_accuracy" not in metrics
