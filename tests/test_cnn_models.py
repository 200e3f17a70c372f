"""LeNet5 and ResNet against the same networks written in PyTorch with the same weights: logits,
loss and every parameter gradient, then 10 steps of SGD with momentum (losses and batch norm's
running statistics); the captured training step replayed equals eager mode bit for bit; the
checkpoint and the `pyengine train cnn` command."""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers import F32, torch

import pyengine
from pyengine import functional as F
from pyengine import io, nn, optim
from pyengine.cli import main
from pyengine.models import LeNet5, ResNet
from pyengine.train_cnn import model_from_checkpoint

pytestmark = pytest.mark.skipif(torch is None, reason="needs torch")

def build_pair(name):
    from pyengine.models.cnn_torch import to_torch

    pyengine.manual_seed(0)
    if name == "lenet":
        ours = LeNet5()
        return ours, to_torch(ours)
    # projection shortcuts in stages 2 and 3, an identity block in stage 2
    blocks, widths = (1, 2, 1), (4, 8, 12)
    ours = ResNet(blocks, widths)
    return ours, to_torch(ours, blocks=blocks, widths=widths)


def digits_batches(count, batch=16, seed=0):
    from pyengine.data import load_digits

    data = load_digits(seed=seed)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        index = rng.choice(len(data.x_train), batch, replace=False)
        out.append((np.ascontiguousarray(data.x_train[index].reshape(batch, 1, 8, 8)), data.y_train[index]))
    return out


def close(actual, expected, what, rtol=1e-4):
    """Agreement to rtol relative to the largest magnitude of the reference."""
    scale = max(float(np.abs(expected).max()), 1e-6)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=what)


@pytest.mark.parametrize("name", ["lenet", "resnet"])
def test_logits_loss_and_every_gradient_match_torch(name):
    ours, theirs = build_pair(name)
    (x, y), = digits_batches(1)
    logits = ours(pyengine.Tensor(x))
    loss = F.cross_entropy(logits, y)
    loss.backward()
    t_logits = theirs(torch.tensor(x))
    t_loss = torch.nn.functional.cross_entropy(t_logits, torch.tensor(y))
    t_loss.backward()
    close(logits.numpy(), t_logits.detach().numpy(), "logits")
    close(loss.numpy(), t_loss.detach().numpy(), "loss")
    theirs_params = dict(theirs.named_parameters())
    for param_name, p in ours.named_parameters():
        close(p.grad.numpy(), theirs_params[param_name].grad.numpy(), f"grad {param_name}")


@pytest.mark.parametrize("name", ["lenet", "resnet"])
def test_ten_sgd_momentum_steps_match_torch(name):
    ours, theirs = build_pair(name)
    opt = optim.SGD(ours.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    t_opt = torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for step, (x, y) in enumerate(digits_batches(10)):
        loss = F.cross_entropy(ours(pyengine.Tensor(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        t_loss = torch.nn.functional.cross_entropy(theirs(torch.tensor(x)), torch.tensor(y))
        t_opt.zero_grad()
        t_loss.backward()
        t_opt.step()
        np.testing.assert_allclose(loss.item(), t_loss.item(), rtol=1e-4, err_msg=f"loss of step {step}")
    for key, value in theirs.state_dict().items():  # weights, running statistics, batch counts
        close(np.asarray(ours.state_dict()[key]), value.numpy(), key, rtol=1e-3 if "weight" in key else 1e-4)
    ours.eval()
    theirs.eval()
    x = digits_batches(1, seed=1)[0][0]
    close(ours(pyengine.Tensor(x)).numpy(), theirs(torch.tensor(x)).detach().numpy(), "eval logits", rtol=1e-3)


def test_captured_resnet_step_equals_eager_bit_for_bit():
    data = digits_batches(4)
    runs = []
    for captured in (False, True):
        model, _ = build_pair("resnet")
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        losses, step = [], None
        for x, y in data:
            if captured:
                step = step or pyengine.capture(lambda xb, yb, net=model: F.cross_entropy(net(xb), yb), x, y,
                                                optimizer=opt)
                losses.append(step.run(x, y).item())
            else:
                loss = F.cross_entropy(model(pyengine.Tensor(x)), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
        runs.append((losses, {k: np.array(v) for k, v in model.state_dict().items()}))
    (eager_losses, eager_state), (replay_losses, replay_state) = runs
    assert replay_losses == eager_losses
    for key, value in eager_state.items():
        np.testing.assert_array_equal(replay_state[key], value, err_msg=key)
    assert int(replay_state["bn1.num_batches_tracked"]) == len(data)


def test_resnet18_layout_and_errors():
    model = ResNet()  # ResNet-18 on 8x8 inputs: 11.2M parameters as torchvision's minus the 7x7 stem
    names = [name for name, _ in model.named_parameters()]
    assert names[:3] == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert "layer2.0.downsample.0.weight" in names and "layer2.1.downsample.0.weight" not in names
    assert names[-2:] == ["fc.weight", "fc.bias"]
    assert sum(1 for n in names if n.endswith("conv2.weight")) == 8
    assert model.fc.in_features == 512
    with pytest.raises(ValueError, match="one positive entry per stage"):
        ResNet(blocks=(2, 2), widths=(8,))
    with pytest.raises(ValueError, match="too small"):
        LeNet5(size=2)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "lenet.safetensors"
    io.save(LeNet5(), path)
    restored = io.load_into(LeNet5(), path)
    assert restored.num_parameters() == LeNet5().num_parameters()
    with pytest.raises(KeyError, match="missing keys"):
        io.load_into(ResNet(widths=(4, 8, 16, 32)), path)
    resnet_path = tmp_path / "resnet.safetensors"
    io.save(ResNet(widths=(4, 8, 16, 32)), resnet_path)
    with pytest.raises(ValueError, match="has shape"):
        io.load_into(ResNet(widths=(8, 16, 32, 64)), resnet_path)


@pytest.mark.parametrize("model", ["lenet", "resnet"])
def test_train_cnn_command_runs_and_checkpoints(model, tmp_path, capsys):
    checkpoint = tmp_path / f"{model}.safetensors"
    args = ["train", "cnn", "--model", model, "--epochs", "1", "--quiet", "--checkpoint", str(checkpoint),
            "--width", "4", "--blocks", "1", "1", "--schedule", "step"]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("test accuracy: 0.") and len(lines[-1]) == len("test accuracy: 0.xxxx")
    assert 0.0 <= float(lines[-1].split(": ")[1]) <= 1.0  # one epoch: the recipe's accuracy is the slow test's
    net = model_from_checkpoint(str(checkpoint))
    assert isinstance(net, LeNet5 if model == "lenet" else ResNet)
    if model == "resnet":
        assert net.bn1.num_batches_tracked.item() == 1437 // 32


@pytest.mark.skipif(not os.environ.get("PYENGINE_SLOW"), reason="a full training run: set PYENGINE_SLOW=1")
@pytest.mark.parametrize("model", ["lenet", "resnet"])
def test_train_cnn_reaches_98_5_percent(model, capsys):
    assert main(["train", "cnn", "--model", model, "--quiet", "--no-checkpoint"]) == 0
    assert float(capsys.readouterr().out.splitlines()[-1].split(": ")[1]) >= 0.985


def test_flatten_module_in_a_sequential():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 3 * 3, 4))
    assert net(pyengine.Tensor(np.ones((5, 1, 8, 8), F32))).shape == (5, 4)


def test_shifted_moves_each_image_by_at_most_one_pixel():
    from pyengine.train_cnn import shifted

    x = np.arange(4 * 64, dtype=F32).reshape(4, 64) + 1
    out = shifted(x, 1, np.random.default_rng(0)).reshape(4, 8, 8)
    images = x.reshape(4, 8, 8)
    for image, moved in zip(images, out):
        matches = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                   if np.array_equal(np.roll(image, (dy, dx), axis=(0, 1))[max(0, dy):8 + min(0, dy),
                                                                           max(0, dx):8 + min(0, dx)],
                                     moved[max(0, dy):8 + min(0, dy), max(0, dx):8 + min(0, dx)])]
        assert matches and (moved == 0).sum() == 8 * 8 - (8 - abs(matches[0][0])) * (8 - abs(matches[0][1]))
    np.testing.assert_array_equal(shifted(x, 0, np.random.default_rng(0)), x)
