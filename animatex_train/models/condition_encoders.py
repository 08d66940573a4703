"""Encoders of the channel-wise and reference-slot conditions (docs/official_release.md §1.3).

Pose images and the local reference image go through a small conv stack down to the latent grid,
then a one-layer transformer along the frame axis at every latent pixel (the "time adapter",
official ``Transformer_v2``). The reference latent gets a stride-1 conv stack and its own adapter.
This is the paper's pose encoder (the EPI's f_e; "similar to VideoComposer's STC-encoder").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from animatex_train.models.attention import attention, split_heads


class FrameAdapter(nn.Module):
    """Pre-LN self-attention + un-normalised residual GELU FF, along the frame axis.

    Attention: ``heads`` heads of width ``dim`` (inner width ``heads * dim``), bias-free qkv.
    """

    def __init__(self, dim: int, heads: int, depth: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([_PreNorm(dim, _FrameSelfAttention(dim, heads, dropout)), _AdapterFeedForward(dim, dropout)])
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, f, dim) -> (n, f, dim)``: one sequence of frames per latent pixel."""
        for attn, ff in self.layers:
            x = attn(x)
            x = ff(x) + x
        return x


class _PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x)) + x


class _FrameSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.to_qkv = nn.Linear(dim, 3 * heads * dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(t, self.heads) for t in self.to_qkv(x).chunk(3, dim=-1))
        return self.to_out(attention(q, k, v).flatten(2))


class _AdapterFeedForward(nn.Module):
    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU()), nn.Dropout(dropout), nn.Linear(4 * dim, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _adapt_over_frames(adapter: FrameAdapter, features: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``(b*f, c, h, w)`` per-frame features -> adapter along frames -> ``(b, c, f, h, w)``."""
    bf, c, h, w = features.shape
    f = bf // batch_size
    sequences = features.view(batch_size, f, c, h, w).permute(0, 3, 4, 1, 2).reshape(batch_size * h * w, f, c)
    sequences = adapter(sequences)
    return sequences.view(batch_size, h, w, f, c).permute(0, 4, 3, 1, 2)


class PixelConditionEncoder(nn.Module):
    """RGB frames in [0, 1] -> ``out_channels`` features on the latent grid, mixed along frames.

    conv3x3 -> SiLU -> average-pool to 4x the latent grid -> stride-2 conv -> SiLU -> stride-2 conv.
    """

    def __init__(
        self,
        out_channels: int,
        hidden_channels: int,
        adapter_heads: int,
        adapter_depth: int,
        dropout: float,
        pool_size: tuple[int, int] | None = None,
    ):
        super().__init__()
        self.conv_in = nn.Conv2d(3, hidden_channels, 3, padding=1)
        self.down1 = nn.Conv2d(hidden_channels, hidden_channels, 3, stride=2, padding=1)
        self.down2 = nn.Conv2d(hidden_channels, out_channels, 3, stride=2, padding=1)
        self.time_adapter = FrameAdapter(out_channels, adapter_heads, adapter_depth, dropout)
        self.pool_size = pool_size

    def forward(self, pixels: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
        """``(b, 3, f, H, W)`` -> ``(b, out_channels, f, h, w)`` with ``(h, w) = latent_size``."""
        b, c, f, height, width = pixels.shape
        frames = pixels.transpose(1, 2).reshape(b * f, c, height, width)
        pool = self.pool_size or (4 * latent_size[0], 4 * latent_size[1])
        features = F.adaptive_avg_pool2d(F.silu(self.conv_in(frames)), tuple(pool))
        features = self.down2(F.silu(self.down1(features)))
        if tuple(features.shape[-2:]) != tuple(latent_size):
            raise ValueError(
                f"condition features land on a {tuple(features.shape[-2:])} grid but the latents are "
                f"{tuple(latent_size)}; "
                "model.denoiser.condition_pool_size must be 4x the latent size (or null to derive it)"
            )
        return _adapt_over_frames(self.time_adapter, features, b)


class LatentConditionEncoder(nn.Module):
    """A reference latent ``(b, 4, 1, h, w)`` -> ``(b, out_channels, 1, h, w)``: stride-1 convs + adapter."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int,
        adapter_heads: int,
        adapter_depth: int,
        dropout: float,
    ):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, hidden_channels, 3, padding=1)
        self.conv_mid = nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1)
        self.conv_out = nn.Conv2d(hidden_channels, out_channels, 3, padding=1)
        self.time_adapter = FrameAdapter(out_channels, adapter_heads, adapter_depth, dropout)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = latents.shape
        frames = latents.transpose(1, 2).reshape(b * f, c, h, w)
        features = self.conv_out(F.silu(self.conv_mid(F.silu(self.conv_in(frames)))))
        return _adapt_over_frames(self.time_adapter, features, b)
