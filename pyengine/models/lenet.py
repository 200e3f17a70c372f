"""LeNet-5 (LeCun et al., 1998) with ReLU and max pooling, for small grey images."""

from __future__ import annotations

from pyengine import functional as F
from pyengine import nn


class LeNet5(nn.Module):
    """conv1 5x5 (6) -> ReLU -> max pool 2 -> conv2 5x5 (16) -> ReLU -> max pool 2 -> fc1 (120) -> ReLU
    -> fc2 (84) -> ReLU -> fc3 (classes).

    conv1 pads by 2 (the 32x32 of the paper from 28x28 MNIST); conv2 is unpadded on images of 20
    pixels or more, as in the paper, and padded by 2 on smaller ones (8x8 digits: 8 -> 4 -> 4 -> 2,
    16 * 2 * 2 features). Takes (N, C, size, size) images or (N, C * size * size) rows of pixels.
    Parameter names match a torch module with the same attributes ('conv1.weight', ..., 'fc3.bias').
    """

    def __init__(self, in_channels: int = 1, classes: int = 10, size: int = 8):
        super().__init__()
        self.in_channels, self.size = in_channels, size
        conv2_padding = 0 if size >= 20 else 2
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5, padding=conv2_padding)
        side = (size // 2 + 2 * conv2_padding - 4) // 2
        if side < 1:
            raise ValueError(f"LeNet5: images of {size}x{size} are too small (at least 4x4)")
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, classes)

    def forward(self, x):
        if x.ndim == 2:
            x = x.reshape(x.shape[0], self.in_channels, self.size, self.size)
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        h = h.reshape(h.shape[0], -1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(h)))))
