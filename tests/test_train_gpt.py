"""`pyengine train gpt` and `pyengine generate` on a small text: determinism,
exact resume after an interruption, checkpoints, the commands' errors."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from pyengine.cli import main
from pyengine.data.text import CharVocab, WindowSampler, load_text_corpus, stdlib_files
from pyengine.train_gpt import CheckpointError, GPTTrainConfig, train_gpt

TEXT = ("def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n" * 40)


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return str(path)


def small_config(text_file, tmp_path, **changes) -> GPTTrainConfig:
    config = GPTTrainConfig(data=text_file, n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4,
                            max_steps=24, warmup_steps=4, eval_interval=8, eval_iters=2, progress=False,
                            checkpoint=str(tmp_path / "gpt.safetensors"))
    return dataclasses.replace(config, **changes)


def quiet(*_):
    pass


def test_stdlib_corpus_is_the_standard_library_without_site_packages():
    files = stdlib_files()
    assert files == sorted(files) and len(files) > 100
    assert not any("site-packages" in f or "dist-packages" in f for f in files)
    assert all(f.endswith(".py") for f in files)


def test_text_corpus_split_and_vocabulary(text_file):
    corpus = load_text_corpus(text_file, val_fraction=0.25)
    assert len(corpus.val) == len(TEXT) - int(len(TEXT) * 0.75)
    assert corpus.vocab.decode(np.concatenate([corpus.train, corpus.val])) == TEXT
    with pytest.raises(ValueError, match="outside the vocabulary"):
        corpus.vocab.encode("def €")


def test_window_sampler_targets_are_shifted_and_its_state_resumes():
    ids = np.arange(100, dtype=np.int64)
    sampler = WindowSampler(ids, block_size=8, batch_size=3, seed=1)
    x, y = sampler.next()
    assert x.shape == (3, 8) and np.array_equal(y, x + 1)
    state = sampler.state()
    expected = sampler.next()
    sampler.set_state(state)
    assert all(np.array_equal(a, b) for a, b in zip(sampler.next(), expected))


def test_vocab_round_trip():
    vocab = CharVocab("héllo\ne")
    assert vocab.decode(vocab.encode("hello\né")) == "hello\né"


def test_training_is_deterministic_and_learns(text_file, tmp_path):
    first = train_gpt(small_config(text_file, tmp_path), log=quiet)
    second = train_gpt(small_config(text_file, tmp_path), log=quiet)
    assert first["losses"] == second["losses"] and first["val_loss"] == second["val_loss"]
    assert first["losses"][24] < first["losses"][1] - 0.5


def test_interrupted_run_resumes_with_bit_identical_losses(text_file, tmp_path):
    whole = train_gpt(small_config(text_file, tmp_path, checkpoint=str(tmp_path / "whole.safetensors")), log=quiet)

    def interrupt(step, loss):
        if step == 13:
            raise KeyboardInterrupt

    first = train_gpt(small_config(text_file, tmp_path), log=quiet, on_step=interrupt)
    assert first["interrupted"] and first["steps"] == 13
    rest = train_gpt(small_config(text_file, tmp_path, resume=True), log=quiet)
    assert not rest["interrupted"] and min(rest["losses"]) == 14
    assert {**first["losses"], **rest["losses"]} == whole["losses"]
    assert rest["val_loss"] == whole["val_loss"]


def test_resume_refuses_a_checkpoint_of_another_configuration(text_file, tmp_path):
    train_gpt(small_config(text_file, tmp_path, max_steps=8), log=quiet)
    with pytest.raises(CheckpointError, match="another configuration: n_embd 16 \\(now 32\\)"):
        train_gpt(small_config(text_file, tmp_path, n_embd=32, resume=True), log=quiet)
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk"):
        train_gpt(small_config(text_file, tmp_path, resume=True,
                               checkpoint=str(tmp_path / "junk.safetensors")), log=quiet)


def _cli_train(text_file, tmp_path, *extra):
    return main(["train", "gpt", "--data", text_file, "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
                 "--block-size", "16", "--batch-size", "4", "--max-steps", "10", "--eval-interval", "5",
                 "--eval-iters", "2", "--checkpoint", str(tmp_path / "cli.safetensors"), "--quiet", *extra])


def test_train_and_generate_commands(text_file, tmp_path, capsys):
    assert _cli_train(text_file, tmp_path) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("val loss: ") and float(out[-1].split(": ")[1]) > 0
    checkpoint = str(tmp_path / "cli.safetensors")
    assert main(["generate", "--checkpoint", checkpoint, "--prompt", "def ", "--max-new-tokens", "30",
                 "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("def ") and len(text.rstrip("\n")) >= 4 + 30 - text.count("\n")


def test_generate_errors_are_one_line(text_file, tmp_path, capsys):
    assert _cli_train(text_file, tmp_path) == 0
    capsys.readouterr()
    checkpoint = str(tmp_path / "cli.safetensors")
    assert main(["generate", "--checkpoint", checkpoint, "--prompt", "∑"]) == 2
    assert "outside the vocabulary" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", checkpoint, "--prompt", "a" * 17]) == 2
    assert "context" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(tmp_path / "missing.safetensors")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigint_saves_a_checkpoint_and_exits_cleanly(text_file, tmp_path):
    command = [sys.executable, "-m", "pyengine.cli", "train", "gpt", "--data", text_file, "--n-layer", "1",
               "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
               "--max-steps", "100000", "--eval-interval", "100000", "--quiet",
               "--checkpoint", str(tmp_path / "int.safetensors")]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=tmp_path)
    first_line = child.stdout.readline()  # the data line: training has started
    assert first_line.startswith("data: ")
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert "interrupted at step" in out and "--resume" in out
    assert os.path.isfile(tmp_path / "int.safetensors")


def test_check_finite_stops_at_the_first_nan_and_keeps_the_last_good_checkpoint(text_file, tmp_path, monkeypatch,
                                                                              capsys):
    import pyengine.train_gpt as T

    schedule = T.learning_rate
    monkeypatch.setattr(T, "learning_rate", lambda config, step: float("nan") if step == 9 else schedule(config, step))
    args = ["--max-steps", "24", "--eval-interval", "4", "--check-finite"]
    assert _cli_train(text_file, tmp_path, *args) == 3  # step 10's update made the weights NaN
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "non-finite" in err and "last good checkpoint" in err
    saved = T.load_checkpoint(str(tmp_path / "cli.safetensors"))
    assert int(saved["step"]) == 8
    assert all(np.isfinite(v.numpy()).all() for v in saved["model"].values())


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("delay", [0.0, 0.1], ids=["at-first-checkpoint", "later"])
def test_sigkill_then_resume_ends_with_the_weights_of_an_uninterrupted_run(text_file, tmp_path, delay):
    import time

    from pyengine.train_gpt import load_checkpoint

    options = ["--data", text_file, "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
               "--batch-size", "4", "--max-steps", "300", "--eval-interval", "4", "--eval-iters", "1", "--quiet"]
    whole = str(tmp_path / "whole.safetensors")
    assert main(["train", "gpt", *options, "--checkpoint", whole]) == 0
    killed = tmp_path / "killed.safetensors"
    child = subprocess.Popen([sys.executable, "-m", "pyengine.cli", "train", "gpt", *options,
                              "--checkpoint", str(killed)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    while not killed.exists() and child.poll() is None:
        time.sleep(0.005)
    time.sleep(delay)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    step = int(load_checkpoint(str(killed))["step"])  # what the kill left: a whole checkpoint
    assert child.returncode == -signal.SIGKILL, "the run ended before the kill: make it longer"
    assert main(["train", "gpt", *options, "--checkpoint", str(killed), "--resume"]) == 0
    expected, got = load_checkpoint(whole), load_checkpoint(str(killed))
    assert int(got["step"]) == 300 and step < 300
    for name, value in expected["model"].items():
        assert np.array_equal(got["model"][name].numpy(), value.numpy()), name
