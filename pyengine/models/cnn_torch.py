"""LeNet5 and ResNet written in PyTorch: the reference the tests compare against and the peer the
benchmarks time. ``to_torch(model)`` builds the twin of a pyengine LeNet5 or ResNet with a copy of
its weights and batch-norm statistics (same names, same layouts). PyTorch is imported only when
this module is.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn as nnt
from torch.nn import functional as ft

from pyengine.models.lenet import LeNet5
from pyengine.models.resnet import ResNet

__all__ = ["TorchLeNet5", "TorchResNet", "to_torch"]


class TorchLeNet5(nnt.Module):
    def __init__(self, in_channels: int = 1, classes: int = 10, size: int = 8):
        super().__init__()
        pad2 = 0 if size >= 20 else 2
        self.conv1, self.conv2 = nnt.Conv2d(in_channels, 6, 5, padding=2), nnt.Conv2d(6, 16, 5, padding=pad2)
        side = (size // 2 + 2 * pad2 - 4) // 2
        self.fc1, self.fc2, self.fc3 = nnt.Linear(16 * side * side, 120), nnt.Linear(120, 84), nnt.Linear(84, classes)

    def forward(self, x):
        h = ft.max_pool2d(ft.relu(self.conv2(ft.max_pool2d(ft.relu(self.conv1(x)), 2))), 2)
        return self.fc3(ft.relu(self.fc2(ft.relu(self.fc1(h.flatten(1))))))


class TorchBlock(nnt.Module):
    def __init__(self, cin: int, c: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = nnt.Conv2d(cin, c, 3, stride, 1, bias=False), nnt.BatchNorm2d(c)
        self.conv2, self.bn2 = nnt.Conv2d(c, c, 3, 1, 1, bias=False), nnt.BatchNorm2d(c)
        self.downsample = None
        if stride != 1 or cin != c:
            self.downsample = nnt.Sequential(nnt.Conv2d(cin, c, 1, stride, bias=False), nnt.BatchNorm2d(c))

    def forward(self, x):
        h = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(h + (x if self.downsample is None else self.downsample(x)))


class TorchResNet(nnt.Module):
    def __init__(self, blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512), in_channels: int = 1, classes: int = 10,
                 size: int = 8):
        super().__init__()
        self.large_stem = size >= 64
        if self.large_stem:
            self.conv1 = nnt.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False)
        else:
            self.conv1 = nnt.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nnt.BatchNorm2d(widths[0])
        c = widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths), 1):
            layers = [TorchBlock(c, w, 1 if i == 1 else 2)] + [TorchBlock(w, w, 1) for _ in range(n - 1)]
            setattr(self, f"layer{i}", nnt.Sequential(*layers))
            c = w
        self.stages = len(blocks)
        self.fc = nnt.Linear(c, classes)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        if self.large_stem:
            h = ft.max_pool2d(h, 3, 2, 1)
        for i in range(1, self.stages + 1):
            h = getattr(self, f"layer{i}")(h)
        return self.fc(ft.adaptive_avg_pool2d(h, 1).flatten(1))


def to_torch(model, **shape) -> nnt.Module:
    """The torch twin of a pyengine LeNet5 or ResNet built with the same arguments (``shape``:
    the constructor's keywords), holding a copy of its state."""
    if isinstance(model, LeNet5):
        twin = TorchLeNet5(**shape)
    elif isinstance(model, ResNet):
        twin = TorchResNet(**shape)
    else:
        raise TypeError(f"to_torch: a LeNet5 or ResNet, got {type(model).__name__}")
    state = model.state_dict()
    if list(state) != list(twin.state_dict()):
        raise ValueError(f"to_torch: {type(model).__name__} built with {shape} and its twin name their state apart")
    twin.load_state_dict({k: torch.tensor(np.array(v)) for k, v in state.items()})
    return twin
