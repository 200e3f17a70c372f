"""A small convolutional network for 8x8 single-channel images (scikit-learn's digits)."""

from __future__ import annotations

from pyengine import functional as F
from pyengine import nn


class CNN(nn.Module):
    """Conv2d(1, 16, 3, padding=1), ReLU, Conv2d(16, 32, 3, stride=2, padding=1), ReLU,
    flatten, Linear(32 * 4 * 4, classes).

    Takes (N, 1, 8, 8) images, or (N, 64) rows of pixels (viewed as such).
    Parameter names match a torch module with the same attributes
    ('conv1.weight', ..., 'head.bias').
    """

    def __init__(self, channels: tuple = (16, 32), classes: int = 10, size: int = 8):
        super().__init__()
        c1, c2 = channels
        self.size = size
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.head = nn.Linear(c2 * ((size + 1) // 2) ** 2, classes)

    def forward(self, x):
        if x.ndim == 2:
            x = x.reshape(x.shape[0], 1, self.size, self.size)
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.head(h.reshape(h.shape[0], -1))
