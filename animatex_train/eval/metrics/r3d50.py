"""The 3D ResNet-50 (Hara et al. 2018, "Can Spatiotemporal 3D CNNs Retrace the History of 2D CNNs and ImageNet?",
B shortcuts, Kinetics-400) whose 2048-d pooled features are DisCo's "FID-VID" (``FVD-3DRN50``).

Written here because no maintained package ships it (torchvision's video ResNets are 18-layer R3D/MC3/R(2+1)D with
other stems); layer names follow kenshohara's code so ``resnet-50-kinetics.pth`` loads strictly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CLIP_FRAMES = 16  # sample_duration of the Kinetics weights
CLIP_SIZE_PX = 112  # sample_size


class Bottleneck3D(nn.Module):
    """1x1x1 -> 3x3x3 (stride) -> 1x1x1 (x4 channels) with a projection shortcut when the shape changes."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv3d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.conv2 = nn.Conv3d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(width)
        self.conv3 = nn.Conv3d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:  # shortcut type B: a strided 1x1x1 convolution + BN
            self.downsample = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm3d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet3D50(nn.Module):
    """``(b, 3, 16, 112, 112)`` (mean-subtracted 0-255 RGB) -> ``(b, 2048)`` pooled features (the fc is kept only so
    the Kinetics file loads strictly; DisCo builds the network with ``last_fc=False``).

    Args:
        num_classes: size of the (unused) classifier in the weight file.
    """

    def __init__(self, num_classes: int = 400) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(3, 64, 7, stride=(1, 2, 2), padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        channels = 64
        for index, (width, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), 1):
            layer = []
            for block in range(blocks):
                layer.append(Bottleneck3D(channels, width, stride if block == 0 else 1))
                channels = width * Bottleneck3D.expansion
            self.add_module(f"layer{index}", nn.Sequential(*layer))
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != (CLIP_FRAMES, CLIP_SIZE_PX, CLIP_SIZE_PX):
            raise ValueError(
                f"3D ResNet-50: expected clips (b, 3, {CLIP_FRAMES}, {CLIP_SIZE_PX}, {CLIP_SIZE_PX}), "
                f"got {tuple(x.shape)}; the Kinetics weights were trained on 16x112x112 clips"
            )
        x = F.max_pool3d(F.relu(self.bn1(self.conv1(x))), kernel_size=3, stride=2, padding=1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        # kenshohara's AvgPool3d((ceil(16/16), ceil(112/32), ceil(112/32)), stride=1) covers the whole 1x4x4 map.
        return F.avg_pool3d(x, (1, 4, 4), stride=1).flatten(1)
