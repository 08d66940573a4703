"""Typed configuration of the Animate-X denoiser: the 3D UNet, its condition encoders and the IPI.

Defaults are the model the paper trains. The architecture is the released Animate-X
(``configs/Animate_X_infer.yaml`` merged over the official default config, docs/official_release.md §1.5): building
``AnimateXDenoiser(DenoiserConfig())`` gives the 1,817,708,556-parameter network whose state dict matches
``animate-x.pth`` key for key. Two behaviours depart from the official code where it departs from the
paper, and both are defaults so that no training recipe has to remember them: each sample's IPI reads its
own keypoints (``KeypointRowOrder``), and the all-dropped group of the condition dropout trains the exact
unconditional branch that classifier-free guidance samples with (``ConditionDropoutConfig``). Neither
changes the released inference (batch 1, eval mode); ``official.config_from_official`` keeps the official
behaviour for parity. Ablations of the paper's Tables 4-5 are values of ``ImplicitPoseIndicatorConfig``
(``enabled``, ``query``, ``placement``); no flag is threaded through ``forward``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import yaml

GROUP_NORM_GROUPS = 32  # every GroupNorm in the network has 32 groups, as in SD 2.1

# How the IPI forms its queries (paper Table 4/5 rows):
#   "learned+keypoints": q = learnable query + keypoint tokens (Animate-X)
#   "keypoints":         q = keypoint tokens only                (w/o LQ)
#   "learned":           q = learnable query only, no keypoints  (w/o DQ)
#   "clip":              q = learnable query + CLIP feature, keys/values = keypoint tokens (KV_Q)
IPIQuery = Literal["learned+keypoints", "keypoints", "learned", "clip"]
# Where the motion tokens enter each spatial transformer:
#   "sequential": after spatial attention (Animate-X);  "parallel": beside it (PA ablation)
PoseAttentionPlacement = Literal["sequential", "parallel"]
# Row order of the keypoint encoder output. The official encoder flattens its (frames, batch) output
# frame-major, which pairs keypoint tokens with the wrong sample when batch > 1 (identical at batch 1,
# the released inference); "official" reproduces it (parity tests only: training with it at micro-batch > 1
# is refused at setup), "per_sample" pairs each sample with its own keypoints (the paper's model; default).
KeypointRowOrder = Literal["official", "per_sample"]


@dataclass
class ConditionDropoutConfig:
    """Train-time condition dropout for classifier-free guidance (UniAnimate's DropPath, docs/official_release.md §4).

    Per batch, a ``p_all_zero`` fraction of samples lose every droppable condition and a disjoint
    ``p_all_keep`` fraction keep all; every other sample loses each condition independently with
    ``p_drop_each``. Droppable: the local-image embedding, the pose-image embedding, the CLIP image tokens.

    The official scheme does not drop the reference slot or the IPI inputs, yet the unconditional branch
    of classifier-free sampling has neither: it runs with every condition None (docs/official_release.md §4). The two
    ``all_dropped_*`` switches make the all-dropped group lose them too, so that group trains exactly the
    branch the sampler uses [INFERRED]: an all-dropped sample's output equals the output for
    ``DenoiserConditions()`` bit for bit (tested). They are on by default; ``config_from_official`` turns
    them off (the official behaviour, for parity only: with them off the unconditional branch is never
    trained as sampled).

    Attributes:
        enabled: False disables it (the denoiser then keeps every condition in train mode too).
        p_all_zero: fraction of the batch drawn into the all-dropped group.
        p_all_keep: fraction drawn into the all-kept group.
        p_drop_each: per-condition drop probability for the remaining samples.
        all_dropped_loses_reference: the all-dropped group also loses the reference slot (ref latent + pose).
        all_dropped_loses_ipi: the all-dropped group's IPI sees zero keypoints and zero CLIP features.
    """

    enabled: bool = True
    p_all_zero: float = 0.1
    p_all_keep: float = 0.1
    p_drop_each: float = 0.5
    all_dropped_loses_reference: bool = True
    all_dropped_loses_ipi: bool = True

    def __post_init__(self) -> None:
        for name in ("p_all_zero", "p_all_keep", "p_drop_each"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"model.denoiser.condition_dropout.{name} must be in [0, 1], got {value}")


@dataclass
class ImplicitPoseIndicatorConfig:
    """The implicit pose indicator (paper section 3.2; docs/official_release.md §2).

    Attributes:
        enabled: False builds no IPI and no pose attention: the UniAnimate network ("w/o IPI").
        query: how queries are formed (see ``IPIQuery``).
        placement: pose attention after ("sequential") or beside ("parallel", PA) spatial attention.
        residual_weight: alpha in ``x + alpha * pose_attention(x)`` (the official ``our_weight``).
        width: width of the keypoint encoder and the extractor (they add up, so they share it).
        num_query_tokens: motion tokens per frame.
        num_keypoints: body keypoints per frame (OpenPose-18 body only, as released).
        max_frames: rows of the keypoint position table = the longest clip + 1 reference frame
            (official ``seq_len``; 33 for 32-frame clips).
        keypoint_heads: attention heads of the keypoint encoder.
        keypoint_layers: post-norm transformer layers of the keypoint encoder.
        keypoint_ff_dim: feed-forward width of the keypoint encoder.
        keypoint_dropout: dropout inside the keypoint encoder (attention weights, FF, residuals).
        extractor_depth: perceiver cross-attention + FFN layers of the extractor.
        extractor_heads: heads of the perceiver attention.
        extractor_head_dim: head width of the perceiver attention.
        extractor_ff_mult: FFN expansion of the extractor.
        clip_dim: width of the driving frames' CLIP features (OpenCLIP ViT-H-14: 1024).
        keypoint_row_order: see ``KeypointRowOrder``.
    """

    enabled: bool = True
    query: IPIQuery = "learned+keypoints"
    placement: PoseAttentionPlacement = "sequential"
    residual_weight: float = 1.0
    width: int = 1024
    num_query_tokens: int = 4
    num_keypoints: int = 18
    max_frames: int = 33
    keypoint_heads: int = 8
    keypoint_layers: int = 3
    keypoint_ff_dim: int = 1024
    keypoint_dropout: float = 0.1
    extractor_depth: int = 8
    extractor_heads: int = 16
    extractor_head_dim: int = 64
    extractor_ff_mult: int = 4
    clip_dim: int = 1024
    keypoint_row_order: KeypointRowOrder = "per_sample"

    def __post_init__(self) -> None:
        for name, kind in (
            ("query", IPIQuery),
            ("placement", PoseAttentionPlacement),
            ("keypoint_row_order", KeypointRowOrder),
        ):
            allowed = get_args(kind)
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"model.denoiser.ipi.{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}"
                )
        if self.width % self.keypoint_heads:
            raise ValueError(
                f"model.denoiser.ipi.width ({self.width}) must be divisible by keypoint_heads ({self.keypoint_heads})"
            )
        for name in ("width", "num_query_tokens", "num_keypoints", "max_frames", "extractor_heads", "clip_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.denoiser.ipi.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class DenoiserConfig:
    """The 3D UNet (UniAnimate / ModelScope-T2V lineage, SD 2.1 spatial layout) plus Animate-X's additions.

    Attributes:
        latent_channels: VAE latent channels (input and output).
        concat_channels: channels of the pose/local-image embeddings concatenated to the latent input.
        base_channels: width of the first level (official ``dim``).
        channel_mult: per-level width multipliers (official ``dim_mult``).
        num_res_blocks: ResBlocks per encoder level (the decoder has one more).
        head_dim: attention head width; spatial and temporal transformers use ``channels // head_dim`` heads.
        first_temporal_heads: heads of the temporal transformer after the input conv (official ``num_heads``).
        attn_scales: latent scales (1, 1/2, ...) whose levels get spatial + temporal transformers.
        temporal_attention: build the temporal transformers.
        context_dim: width of the cross-attention context (text tokens and CLIP image tokens).
        num_image_tokens: CLIP image tokens made from the reference embedding.
        num_text_tokens: rows of the empty-prompt context (``zero_y``), a buffer set from the CLIP text tower.
        dropout: dropout in the ResBlocks.
        temporal_conv_dropout: dropout in the temporal conv blocks.
        adapter_dropout: dropout in the condition time adapters.
        adapter_heads: heads of the condition time adapters.
        adapter_depth: layers of the condition time adapters.
        condition_pool_size: ``(height, width)`` the pixel-condition encoders pool to before their two
            stride-2 convs. None derives it as 4x the latent grid, so conditions work at any resolution
            (the official code hard-codes (384, 256), which is the same rule at 768x512).
        condition_dropout: train-time condition dropout.
        ipi: the implicit pose indicator.
    """

    latent_channels: int = 4
    concat_channels: int = 8
    base_channels: int = 320
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 4])
    num_res_blocks: int = 2
    head_dim: int = 64
    first_temporal_heads: int = 8
    attn_scales: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.25])
    temporal_attention: bool = True
    context_dim: int = 1024
    num_image_tokens: int = 4
    num_text_tokens: int = 77
    dropout: float = 0.1
    temporal_conv_dropout: float = 0.1
    adapter_dropout: float = 0.05
    adapter_heads: int = 2
    adapter_depth: int = 1
    condition_pool_size: list[int] | None = None
    condition_dropout: ConditionDropoutConfig = field(default_factory=ConditionDropoutConfig)
    ipi: ImplicitPoseIndicatorConfig = field(default_factory=ImplicitPoseIndicatorConfig)

    def __post_init__(self) -> None:
        if isinstance(self.condition_dropout, dict):
            self.condition_dropout = ConditionDropoutConfig(**self.condition_dropout)
        if isinstance(self.ipi, dict):
            self.ipi = ImplicitPoseIndicatorConfig(**self.ipi)
        self.channel_mult = [int(m) for m in self.channel_mult]
        self.attn_scales = [float(s) for s in self.attn_scales]
        if not self.channel_mult:
            raise ValueError("model.denoiser.channel_mult must list at least one level multiplier, e.g. [1, 2, 4, 4]")
        for width in self.level_channels:
            if width % GROUP_NORM_GROUPS:
                raise ValueError(
                    f"model.denoiser: every level width must be divisible by {GROUP_NORM_GROUPS} (GroupNorm groups); "
                    f"base_channels={self.base_channels} x channel_mult={self.channel_mult} gives {width}"
                )
            if width % self.head_dim:
                raise ValueError(f"model.denoiser: level width {width} is not divisible by head_dim={self.head_dim}")
        valid_scales = {1.0 / 2**i for i in range(len(self.channel_mult))}
        if any(s not in valid_scales for s in self.attn_scales):
            raise ValueError(
                f"model.denoiser.attn_scales must be latent scales among {sorted(valid_scales, reverse=True)}; "
                f"got {self.attn_scales}"
            )
        if self.ipi.enabled and self.ipi.clip_dim < 1:
            raise ValueError("model.denoiser.ipi.clip_dim must be >= 1")
        if self.condition_pool_size is not None and len(self.condition_pool_size) != 2:
            raise ValueError(
                f"model.denoiser.condition_pool_size must be [height, width] or null, got {self.condition_pool_size}"
            )

    @property
    def level_channels(self) -> list[int]:
        """Width of each UNet level."""
        return [self.base_channels * m for m in self.channel_mult]

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.base_channels

    @property
    def latent_downsample(self) -> int:
        """How much the UNet shrinks the latent grid at its deepest level."""
        return 2 ** (len(self.channel_mult) - 1)


TINY_DENOISER_FILE = Path(__file__).with_name("tiny_denoiser.yaml")


def tiny_denoiser_config(**overrides) -> DenoiserConfig:
    """The tiny configuration of the tests, the CPU demo and ``animate --tiny`` (a few hundred thousand parameters).

    Same structure as the paper model (all branches, IPI, temporal blocks), narrow widths. The values are
    ``models/tiny_denoiser.yaml``, which ``recipes/debug/tiny_cpu.yaml`` includes as ``model.denoiser``.
    """
    values = yaml.safe_load(TINY_DENOISER_FILE.read_text())
    values["ipi"] = ImplicitPoseIndicatorConfig(**values["ipi"])
    values.update(overrides)
    return DenoiserConfig(**values)
