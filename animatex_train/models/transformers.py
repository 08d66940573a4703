"""Attention blocks of the UNet: SD 2.1-style spatial transformers (with Animate-X's pose attention)
and temporal transformers over frames.

Every activation between blocks is ``(b*f, c, h, w)`` with rows in ``(b f)`` order, where ``f``
counts the reference slot (frames + 1), as in the official network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from animatex_train.models.attention import attention, split_heads
from animatex_train.models.config import GROUP_NORM_GROUPS


@dataclass
class BlockContext:
    """What every UNet block may read besides its input activation.

    Attributes:
        time_embedding: ``(b, 4*base_channels)`` timestep embedding (one per sample).
        context: ``(b, m, context_dim)`` cross-attention tokens (empty prompt + CLIP image tokens).
        motion_tokens: ``(b*f, n, context_dim)`` the IPI's per-frame motion tokens, or None without IPI.
        batch_size: ``b``.
        num_frames: ``f`` (generated frames + the reference slot).
    """

    time_embedding: torch.Tensor
    context: torch.Tensor
    motion_tokens: torch.Tensor | None
    batch_size: int
    num_frames: int


class CrossAttention(nn.Module):
    """Multi-head attention with bias-free q/k/v projections (self-attention when no context is given)."""

    def __init__(self, query_dim: int, heads: int, head_dim: int, context_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, context_repeats: int = 1) -> torch.Tensor:
        """Attend from ``x`` ``(n, s, query_dim)`` to ``context`` ``(n / context_repeats, m, context_dim)``.

        ``context_repeats`` lets one context per sample serve all its frames: keys and values are
        projected once per sample and repeated, instead of projecting ``f`` identical copies.
        """
        source = x if context is None else context
        k, v = self.to_k(source), self.to_v(source)
        if context_repeats > 1:
            k, v = k.repeat_interleave(context_repeats, dim=0), v.repeat_interleave(context_repeats, dim=0)
        out = attention(split_heads(self.to_q(x), self.heads), split_heads(k, self.heads), split_heads(v, self.heads))
        return self.to_out(out.flatten(2))


class GEGLUFeedForward(nn.Module):
    """SD's gated feed-forward: ``Linear(d, 2*4d) -> x * gelu(gate) -> Dropout -> Linear(4d, d)``."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(_GEGLU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class BasicTransformerBlock(nn.Module):
    """Pre-LN self-attention, cross-attention (self-attention again when no context), GEGLU FF."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None = None):
        super().__init__()
        self.attn1 = CrossAttention(dim, heads, head_dim)
        self.ff = GEGLUFeedForward(dim)
        self.attn2 = CrossAttention(dim, heads, head_dim, context_dim=context_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, context_repeats: int = 1) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context, context_repeats) + x
        return self.ff(self.norm3(x)) + x


class ImageTransformer(nn.Module):
    """GroupNorm -> linear proj_in -> transformer block -> zero-initialised linear proj_out, over h*w tokens.

    ``delta`` returns the block's contribution without the residual; subclasses add it.
    """

    def __init__(self, channels: int, heads: int, head_dim: int, context_dim: int):
        super().__init__()
        inner = heads * head_dim
        self.norm = nn.GroupNorm(GROUP_NORM_GROUPS, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(inner, heads, head_dim, context_dim)])
        # The official code builds proj_out as Linear(channels, inner); the two are equal in every
        # configuration it supports (inner = channels // head_dim * head_dim), so the shapes agree.
        self.proj_out = nn.Linear(channels, inner)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def delta(self, x: torch.Tensor, context: torch.Tensor | None, context_repeats: int = 1) -> torch.Tensor:
        """``(n, c, h, w) -> (n, c, h, w)`` without the residual."""
        n, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))
        for block in self.transformer_blocks:
            tokens = block(tokens, context, context_repeats)
        return self.proj_out(tokens).transpose(1, 2).reshape(n, c, h, w)


class SpatialTransformer(ImageTransformer):
    """SD 2.1 spatial transformer over each frame, followed by Animate-X's pose attention.

    The pose attention (paper "motion attention", docs/official_release.md §2.4) is a second image transformer whose
    cross-attention reads the IPI's motion tokens of the same frame; its output layer is zero-initialised
    so the block starts as the identity (a UniAnimate checkpoint reproduces UniAnimate at step 0).
    ``placement="sequential"`` applies it to the spatial transformer's output with residual weight
    alpha; ``"parallel"`` (the PA ablation) adds it, computed from the block input, beside the spatial path.
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        head_dim: int,
        context_dim: int,
        with_pose_attention: bool,
        placement: str = "sequential",
        residual_weight: float = 1.0,
    ):
        super().__init__(channels, heads, head_dim, context_dim)
        self.pose_attention = ImageTransformer(channels, heads, head_dim, context_dim) if with_pose_attention else None
        self.parallel = placement == "parallel"
        self.residual_weight = residual_weight

    def forward(self, x: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        out = x + self.delta(x, ctx.context, context_repeats=ctx.num_frames)
        if self.pose_attention is None:
            return out
        if ctx.motion_tokens is None:
            raise ValueError("this denoiser has pose attention but received no motion tokens")
        if self.parallel:  # official PA: the parallel branch is added without alpha
            return out + self.pose_attention.delta(x, ctx.motion_tokens)
        return out + self.residual_weight * self.pose_attention.delta(out, ctx.motion_tokens)


class TemporalTransformer(nn.Module):
    """Self-attention across frames at every pixel (both attentions of the block are self-attention).

    GroupNorm normalises over frames jointly (5-D), proj_in/proj_out are kernel-1 Conv1d (kept as Conv1d
    parameters for the official layout, applied as matmuls). No temporal position encoding (by design
    in UniAnimate, its issue #47).
    """

    def __init__(self, channels: int, heads: int, head_dim: int):
        super().__init__()
        inner = heads * head_dim
        self.norm = nn.GroupNorm(GROUP_NORM_GROUPS, channels, eps=1e-6)
        self.proj_in = nn.Conv1d(channels, inner, kernel_size=1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(inner, heads, head_dim)])
        self.proj_out = nn.Conv1d(inner, channels, kernel_size=1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        b, f = ctx.batch_size, ctx.num_frames
        _, c, h, w = x.shape
        video = x.view(b, f, c, h, w).transpose(1, 2)  # (b, c, f, h, w)
        tokens = self.norm(video).permute(0, 3, 4, 2, 1).reshape(b * h * w, f, c)  # (b h w, f, c)
        tokens = F.linear(tokens, self.proj_in.weight[..., 0], self.proj_in.bias)
        for block in self.transformer_blocks:
            tokens = block(tokens)
        tokens = F.linear(tokens, self.proj_out.weight[..., 0], self.proj_out.bias)
        delta = tokens.view(b, h, w, f, c).permute(0, 3, 4, 1, 2).reshape(b * f, c, h, w)
        return x + delta
