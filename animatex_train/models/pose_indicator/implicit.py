"""The Implicit Pose Indicator (paper section 3.2): keypoints + driving CLIP -> motion tokens.

The official module is ``animatex/model/IPI_module.py`` (``docs/official_release.md`` §2).

A keypoint encoder turns each frame's 18 body keypoints into ``num_query_tokens`` query tokens
(a transformer across frames, then a zero-initialised MLP, so the keypoint query starts at 0); an
extractor (a perceiver resampler) lets learnable queries plus those keypoint tokens attend to the
frame's pooled CLIP feature, giving per-frame motion tokens that the UNet's pose attention reads.
The paper's ablations change only how queries and keys are formed (``ImplicitPoseIndicatorConfig.query``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from animatex_train.models.attention import attention, split_heads
from animatex_train.models.config import ImplicitPoseIndicatorConfig
from animatex_train.models.embeddings import check_position_capacity, sinusoid_position_table


class _PositionTable(nn.Module):
    def __init__(self, length: int, dim: int):
        super().__init__()
        self.register_buffer("pos_table", sinusoid_position_table(length, dim))


class _SelfAttention(nn.Module):
    """``nn.MultiheadAttention``'s parameter layout (packed in-projection), run through ``attention``."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(t, self.heads) for t in F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, -1))
        out = attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.flatten(2))


class _PostNormEncoderLayer(nn.Module):
    """DETR-style post-norm encoder layer: ``norm1(x + attn(x))``, ``norm2(x + ff(x))``, ReLU FF."""

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float):
        super().__init__()
        self.self_attn = _SelfAttention(dim, heads, dropout)
        self.linear1 = nn.Linear(dim, ff_dim)
        self.linear2 = nn.Linear(ff_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.dropout(self.self_attn(x)))
        return self.norm2(x + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x))))))


class _Encoder(nn.Module):
    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)


class KeypointEncoder(nn.Module):
    """Per-frame keypoints ``(b, f, 2, k)`` -> query tokens ``(b*f, num_tokens, width)`` (official DwposeEncoder)."""

    def __init__(self, config: ImplicitPoseIndicatorConfig):
        super().__init__()
        width = config.width
        self.row_order = config.keypoint_row_order
        self.num_tokens = config.num_query_tokens
        self.encoder = _Encoder(
            [
                _PostNormEncoderLayer(width, config.keypoint_heads, config.keypoint_ff_dim, config.keypoint_dropout)
                for _ in range(config.keypoint_layers)
            ]
        )
        for p in self.encoder.parameters():  # the official code re-initialises the encoder with Xavier
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.pos_embed = _PositionTable(config.max_frames, width)
        input_dim = 2 * config.num_keypoints
        self.increase_embed_dim = nn.Sequential(nn.Linear(input_dim, width // 2), nn.Linear(width // 2, width))
        self.token_mlp = nn.Sequential(
            nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width * config.num_query_tokens)
        )
        nn.init.zeros_(self.token_mlp[-1].weight)  # zero init: the keypoint query is 0 at step 0
        nn.init.zeros_(self.token_mlp[-1].bias)

    def forward(self, keypoints: torch.Tensor) -> torch.Tensor:
        b, f = keypoints.shape[:2]
        check_position_capacity(f, self.pos_embed.pos_table.shape[1])
        x = self.increase_embed_dim(keypoints.reshape(b, f, -1)) + self.pos_embed.pos_table[:, :f].to(keypoints.dtype)
        for layer in self.encoder.layers:
            x = layer(x)  # self-attention across the f frames of each sample
        if self.row_order == "official":
            # Official: the (frames, batch, d) output is flattened frame-major: row r holds sample r % b,
            # frame r // b, while every consumer reads rows as (b f). Kept for exact parity.
            x = x.transpose(0, 1)
        rows = x.reshape(b * f, -1)
        return self.token_mlp(rows).view(b * f, self.num_tokens, -1)


class _PerceiverAttention(nn.Module):
    """Latents attend to [features, latents]; LayerNorm on both, bias-free projections."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, features: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        latents = self.norm2(latents)
        k, v = self.to_kv(torch.cat([self.norm1(features), latents], dim=1)).chunk(2, dim=-1)
        out = attention(
            split_heads(self.to_q(latents), self.heads), split_heads(k, self.heads), split_heads(v, self.heads)
        )
        return self.to_out(out.flatten(2))


def _feed_forward(dim: int, mult: int) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(), nn.Linear(dim * mult, dim, bias=False)
    )


class MotionExtractor(nn.Module):
    """Perceiver resampler (official ``Resampler``): queries attend to a per-frame source, ``depth`` times."""

    def __init__(self, config: ImplicitPoseIndicatorConfig, output_dim: int, learnable_query: bool):
        super().__init__()
        width = config.width
        if learnable_query:
            self.latents = nn.Parameter(torch.randn(1, config.num_query_tokens, width) / width**0.5)
        else:
            self.register_parameter("latents", None)
        self.proj_in = nn.Linear(config.clip_dim, width)
        self.proj_out = nn.Linear(width, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    _PerceiverAttention(width, config.extractor_heads, config.extractor_head_dim),
                    _feed_forward(width, config.extractor_ff_mult),
                ]
            )
            for _ in range(config.extractor_depth)
        )

    def forward(self, queries: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """``queries (n, q, width)``, ``source (n, s, width)`` -> ``(n, q, output_dim)``."""
        for attn, ff in self.layers:
            queries = attn(source, queries) + queries
            queries = ff(queries) + queries
        return self.norm_out(self.proj_out(queries))


# Query plans: (extractor, keypoint tokens or None, projected CLIP (n, 1, width)) -> (queries, source).
QueryPlan = Callable[[MotionExtractor, torch.Tensor | None, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _learned_plus_keypoints(ex: MotionExtractor, kp: torch.Tensor | None, clip: torch.Tensor):
    return ex.latents.expand(clip.shape[0], -1, -1) + kp, clip


def _keypoints_only(ex: MotionExtractor, kp: torch.Tensor | None, clip: torch.Tensor):
    return kp, clip


def _learned_only(ex: MotionExtractor, kp: torch.Tensor | None, clip: torch.Tensor):
    return ex.latents.expand(clip.shape[0], -1, -1), clip


def _clip_queries_keypoint_keys(ex: MotionExtractor, kp: torch.Tensor | None, clip: torch.Tensor):
    # KV_Q ablation (paper Table 5): the frame's CLIP feature, added to every learnable query, asks;
    # the keypoint tokens answer. [INFERRED: the paper gives no more detail than "CLIP as Q, DWPose as K,V".]
    return ex.latents.expand(clip.shape[0], -1, -1) + clip, kp


_QUERY_PLANS: dict[str, tuple[QueryPlan, bool, bool]] = {
    # query: (plan, needs keypoint encoder, has learnable query)
    "learned+keypoints": (_learned_plus_keypoints, True, True),
    "keypoints": (_keypoints_only, True, False),
    "learned": (_learned_only, False, True),
    "clip": (_clip_queries_keypoint_keys, True, True),
}


class ImplicitPoseIndicator(nn.Module):
    """Keypoints ``(b, f, 2, k)`` + driving CLIP ``(b, f, clip_dim)`` -> motion tokens ``(b*f, q, output_dim)``.

    Missing inputs (the unconditional branch) are zeros, as in the official forward, so the tokens
    of the unconditional branch are learned, not zero.
    """

    def __init__(self, config: ImplicitPoseIndicatorConfig, output_dim: int):
        super().__init__()
        plan, needs_keypoints, learnable_query = _QUERY_PLANS[config.query]
        self.config = config
        self._plan = plan
        self.keypoint_encoder = KeypointEncoder(config) if needs_keypoints else None
        self.extractor = MotionExtractor(config, output_dim, learnable_query)

    def forward(
        self, keypoints: torch.Tensor | None, driving_clip: torch.Tensor | None, batch_size: int, num_frames: int
    ) -> torch.Tensor:
        dtype = self.extractor.proj_in.weight.dtype
        device = self.extractor.proj_in.weight.device
        if keypoints is None:
            keypoints = torch.zeros(batch_size, num_frames, 2, self.config.num_keypoints, device=device, dtype=dtype)
        if driving_clip is None:
            driving_clip = torch.zeros(batch_size, num_frames, self.config.clip_dim, device=device, dtype=dtype)
        expected = (batch_size, num_frames)
        if tuple(keypoints.shape[:2]) != expected or tuple(driving_clip.shape[:2]) != expected:
            raise ValueError(
                f"IPI inputs must cover every frame incl. the reference: expected (b, f) = {expected}, got keypoints "
                f"{tuple(keypoints.shape)} and driving CLIP {tuple(driving_clip.shape)}"
            )
        keypoint_tokens = None if self.keypoint_encoder is None else self.keypoint_encoder(keypoints)
        clip = self.extractor.proj_in(driving_clip.reshape(batch_size * num_frames, 1, -1))
        queries, source = self._plan(self.extractor, keypoint_tokens, clip)
        return self.extractor(queries, source)
