"""ResNet (He et al., 2016) with basic blocks, batch norm and projection shortcuts.

The layout and parameter names are torchvision's ResNet-18 ('conv1', 'bn1', 'layer1.0.conv1',
'layer2.0.downsample.0', ..., 'fc'): ResNet() is ResNet-18's four stages of two basic blocks,
widths 64 to 512; `widths` and `blocks` make it narrower or deeper (blocks=(3, 4, 6, 3) is
ResNet-34). The stem adapts to the image size: a 7x7 stride-2 convolution and a 3x3 stride-2 max
pool (ImageNet) for images of 64 pixels or more, else a 3x3 stride-1 convolution and no pooling
(small images: the 8x8 digits go 8 -> 8 -> 4 -> 2 -> 1 through the stages).
"""

from __future__ import annotations

from pyengine import functional as F
from pyengine import nn


class BasicBlock(nn.Module):
    """conv3x3 (stride) -> bn -> ReLU -> conv3x3 -> bn, plus the shortcut, then ReLU. The shortcut
    is the identity, or a 1x1 convolution (stride) and bn where the shape changes."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(channels))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(h + shortcut)


class ResNet(nn.Module):
    """Stem, then len(blocks) stages of basic blocks (the first of each stage but the first
    halves the size), global average pooling and a linear head. Takes (N, C, size, size)
    images or (N, C * size * size) rows of pixels."""

    def __init__(self, blocks: tuple = (2, 2, 2, 2), widths: tuple = (64, 128, 256, 512), in_channels: int = 1,
                 classes: int = 10, size: int = 8):
        super().__init__()
        if len(blocks) != len(widths) or not blocks or min(blocks) < 1 or min(widths) < 1:
            raise ValueError(f"ResNet: blocks {blocks} and widths {widths} need one positive entry per stage")
        self.in_channels, self.size = in_channels, size
        self.large_stem = size >= 64
        if self.large_stem:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        channels = widths[0]
        for stage, (count, width) in enumerate(zip(blocks, widths), 1):
            stride = 1 if stage == 1 else 2
            layers = [BasicBlock(channels, width, stride)] + [BasicBlock(width, width) for _ in range(count - 1)]
            setattr(self, f"layer{stage}", nn.Sequential(*layers))
            channels = width
        self.stages = len(blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        if x.ndim == 2:
            x = x.reshape(x.shape[0], self.in_channels, self.size, self.size)
        h = F.relu(self.bn1(self.conv1(x)))
        if self.large_stem:
            h = F.max_pool2d(h, 3, 2, 1)
        for stage in range(1, self.stages + 1):
            h = getattr(self, f"layer{stage}")(h)
        h = self.avgpool(h)
        return self.fc(h.reshape(h.shape[0], -1))
