"""Convolutional blocks of the UNet: the input conv, ResBlocks with their temporal conv, down/upsampling.

Activations are ``(b*f, c, h, w)`` with rows in ``(b f)`` order (``f`` includes the reference slot).
Each block's ``forward(x, ctx)`` takes the same ``BlockContext`` so the UNet iterates its block lists
without dispatching on types, and an outside strategy can wrap any block for activation checkpointing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from animatex_train.models.config import GROUP_NORM_GROUPS
from animatex_train.models.transformers import BlockContext


class InputConv(nn.Conv2d):
    """The first 3x3 conv, from latent + concatenated conditions to ``base_channels``."""

    def forward(self, x: torch.Tensor, ctx: BlockContext | None = None) -> torch.Tensor:  # noqa: ARG002
        return super().forward(x)


class TemporalConvBlock(nn.Module):
    """Four (GroupNorm, SiLU, [Dropout], Conv3d k=(3,1,1)) layers over frames with a residual.

    The last conv is zero-initialised so the block starts as the identity (ModelScope-T2V).
    """

    def __init__(self, channels: int, dropout: float):
        super().__init__()

        def layer(with_dropout: bool) -> nn.Sequential:
            parts: list[nn.Module] = [nn.GroupNorm(GROUP_NORM_GROUPS, channels), nn.SiLU()]
            if with_dropout:
                parts.append(nn.Dropout(dropout))
            parts.append(nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0)))
            return nn.Sequential(*parts)

        self.conv1 = layer(with_dropout=False)
        self.conv2 = layer(with_dropout=True)
        self.conv3 = layer(with_dropout=True)
        self.conv4 = layer(with_dropout=True)
        nn.init.zeros_(self.conv4[-1].weight)
        nn.init.zeros_(self.conv4[-1].bias)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``(b, c, f, h, w) -> (b, c, f, h, w)``."""
        return video + self.conv4(self.conv3(self.conv2(self.conv1(video))))


class ResBlock(nn.Module):
    """SD ResBlock (timestep embedding added, not scale-shift) followed by its temporal conv block."""

    def __init__(
        self, in_channels: int, out_channels: int, time_embed_dim: int, dropout: float, temporal_dropout: float
    ):
        super().__init__()
        self.in_layers = nn.Sequential(
            nn.GroupNorm(GROUP_NORM_GROUPS, in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(time_embed_dim, out_channels))
        self.out_layers = nn.Sequential(
            nn.GroupNorm(GROUP_NORM_GROUPS, out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        nn.init.zeros_(self.out_layers[-1].weight)
        nn.init.zeros_(self.out_layers[-1].bias)
        self.skip_connection = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)
        self.temporal_conv = TemporalConvBlock(out_channels, temporal_dropout)

    def forward(self, x: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        h = self.in_layers(x)
        emb = self.emb_layers(ctx.time_embedding).to(h.dtype).repeat_interleave(ctx.num_frames, dim=0)
        h = self.skip_connection(x) + self.out_layers(h + emb[:, :, None, None])
        b, f = ctx.batch_size, ctx.num_frames
        video = h.view(b, f, *h.shape[1:]).transpose(1, 2)  # (b, c, f, h, w)
        return self.temporal_conv(video).transpose(1, 2).reshape(h.shape)


class Downsample(nn.Module):
    """Stride-2 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, ctx: BlockContext | None = None) -> torch.Tensor:  # noqa: ARG002
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, ctx: BlockContext | None = None) -> torch.Tensor:  # noqa: ARG002
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
