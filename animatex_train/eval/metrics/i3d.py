"""Inception-I3D (Carreira & Zisserman 2017, "Quo Vadis, Action Recognition?") as DisCo's FVD runs it: the PyTorch
port whose state-dict names ``i3d_pretrained_400.pt`` uses, returning the 400 Kinetics logits averaged over time.

Written here because no maintained package ships this network (docs/evaluation.md); the layer names, the
TensorFlow "SAME" padding and the ``[1, 7, 7]`` average pool follow DisCo tool/metrics/inception3d.py so that the
published weight file loads strictly and gives DisCo's features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (front, back) for one dimension; the extra pixel goes at the back."""
    total = max(kernel - (stride if size % stride == 0 else size % stride), 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    pads: list[int] = []
    for dim in (2, 1, 0):  # F.pad takes the last dimension (w) first
        pads.extend(_same_padding(x.shape[2 + dim], kernel[dim], stride[dim]))
    return F.pad(x, pads)


class Unit3D(nn.Module):
    """Conv3d (SAME padding) -> BatchNorm3d (eps 1e-3, as the TF original) -> ReLU; the logits unit has a bias and
    neither norm nor activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        norm_and_relu: bool = True,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.norm_and_relu = kernel, stride, norm_and_relu
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride, bias=not norm_and_relu)
        if norm_and_relu:
            self.bn = nn.BatchNorm3d(out_channels, eps=1e-3, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        return F.relu(self.bn(x)) if self.norm_and_relu else x


class MaxPoolSame(nn.Module):
    """Max pooling with TF "SAME" zero padding (zeros, not -inf: the inputs are post-ReLU, as in the port)."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionBlock(nn.Module):
    """The four-branch Inception module; ``widths`` = (1x1, 3x3 reduce, 3x3, 3x3 reduce, 3x3, pool proj)."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        self.b0 = Unit3D(in_channels, widths[0])
        self.b1a = Unit3D(in_channels, widths[1])
        self.b1b = Unit3D(widths[1], widths[2], (3, 3, 3))
        self.b2a = Unit3D(in_channels, widths[3])
        self.b2b = Unit3D(widths[3], widths[4], (3, 3, 3))
        self.b3a = MaxPoolSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, widths[5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


# (name, module) in forward order; the names are the state-dict prefixes of i3d_pretrained_400.pt.
def _layers() -> list[tuple[str, nn.Module]]:
    return [
        ("Conv3d_1a_7x7", Unit3D(3, 64, (7, 7, 7), (2, 2, 2))),
        ("MaxPool3d_2a_3x3", MaxPoolSame((1, 3, 3), (1, 2, 2))),
        ("Conv3d_2b_1x1", Unit3D(64, 64)),
        ("Conv3d_2c_3x3", Unit3D(64, 192, (3, 3, 3))),
        ("MaxPool3d_3a_3x3", MaxPoolSame((1, 3, 3), (1, 2, 2))),
        ("Mixed_3b", InceptionBlock(192, (64, 96, 128, 16, 32, 32))),
        ("Mixed_3c", InceptionBlock(256, (128, 128, 192, 32, 96, 64))),
        ("MaxPool3d_4a_3x3", MaxPoolSame((3, 3, 3), (2, 2, 2))),
        ("Mixed_4b", InceptionBlock(480, (192, 96, 208, 16, 48, 64))),
        ("Mixed_4c", InceptionBlock(512, (160, 112, 224, 24, 64, 64))),
        ("Mixed_4d", InceptionBlock(512, (128, 128, 256, 24, 64, 64))),
        ("Mixed_4e", InceptionBlock(512, (112, 144, 288, 32, 64, 64))),
        ("Mixed_4f", InceptionBlock(528, (256, 160, 320, 32, 128, 128))),
        ("MaxPool3d_5a_2x2", MaxPoolSame((2, 2, 2), (2, 2, 2))),
        ("Mixed_5b", InceptionBlock(832, (256, 160, 320, 32, 128, 128))),
        ("Mixed_5c", InceptionBlock(832, (384, 192, 384, 48, 128, 128))),
    ]


class InceptionI3d(nn.Module):
    """``(b, 3, f, 224, 224)`` in ``[-1, 1]`` -> ``(b, num_classes)`` logits averaged over the remaining time steps.

    Args:
        num_classes: 400 for the Kinetics-400 weights FVD uses.
    """

    def __init__(self, num_classes: int = 400) -> None:
        super().__init__()
        self.order = [name for name, _ in _layers()]
        for name, module in _layers():
            self.add_module(name, module)
        self.logits = Unit3D(1024, num_classes, norm_and_relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.order:
            x = getattr(self, name)(x)
        # DisCo pools (1, 7, 7): one logit vector per remaining time step (dropout is identity in eval), then the
        # mean over time.
        x = self.logits(F.avg_pool3d(x, (1, 7, 7), stride=1))
        return x.squeeze(4).squeeze(3).mean(2)
