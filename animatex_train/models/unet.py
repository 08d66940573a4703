"""The Animate-X denoiser: a 3D UNet over the reference slot + generated frames, with the IPI.

Paper Fig. 2 / docs/official_release.md §1.2-1.3, §2.4. Inputs are noisy latents ``(b, 4, f, h, w)``; the
network runs on ``f + 1`` frames, the extra leading frame being the reference slot (the reference
latent embedding, or zeros), and returns the ``f`` generated frames. Channel-wise conditions
(local reference image, driving pose images) are embedded to ``concat_channels`` and concatenated to
the latents; the CLIP image tokens join the empty-prompt tokens as cross-attention context; the IPI's
motion tokens enter every spatial transformer through the pose attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from animatex_train.models.blocks import Downsample, InputConv, ResBlock, Upsample
from animatex_train.models.condition_dropout import ConditionDropout
from animatex_train.models.condition_encoders import LatentConditionEncoder, PixelConditionEncoder
from animatex_train.models.config import GROUP_NORM_GROUPS, DenoiserConfig
from animatex_train.models.embeddings import timestep_embedding
from animatex_train.models.pose_indicator.implicit import ImplicitPoseIndicator
from animatex_train.models.transformers import BlockContext, SpatialTransformer, TemporalTransformer


@dataclass
class DenoiserConditions:
    """Everything the denoiser is conditioned on besides the noisy latents and timesteps; any may be None.

    Attributes:
        image_embedding: ``(b, context_dim)`` pooled CLIP embedding of the reference image.
        local_image: ``(b, 3, f, H, W)`` or ``(b, 3, 1, H, W)`` (one frame, used for all) RGB in [0, 1]:
            the reference image in pixel space, concatenated to every frame.
        pose_images: ``(b, 3, f + 1, H, W)`` rendered pose images in [0, 1]; frame 0 is the reference
            pose (read only together with ``ref_latent``), frames 1..f drive the generated frames.
        ref_latent: ``(b, 4, 1, h, w)`` scaled VAE latent of the reference image (only frame 0 is read).
        pose_keypoints: ``(b, f + 1, 2, 18)`` normalised body keypoints (x row, y row; -1 = missing);
            frame 0 is the reference's.
        driving_clip: ``(b, f + 1, clip_dim)`` pooled CLIP features; frame 0 is the reference image's.
        local_image_keep: optional ``(b,)`` {0, 1}: per-sample presence of ``local_image`` (0 = as if None).
        ref_latent_keep: optional ``(b,)`` {0, 1}: per-sample presence of the reference slot.
        ipi_keep: optional ``(b,)`` {0, 1}: per-sample presence of the IPI inputs (0 = zero inputs, as if None).
        image_keep: optional ``(b,)`` {0, 1}: per-sample presence of the CLIP image tokens (0 = exact zero tokens).
        pose_images_keep: optional ``(b,)`` {0, 1}: per-sample presence of the driving pose images.

    With every keep mask 0 a sample's output equals the output for ``DenoiserConditions()`` (the unconditional
    branch), so one batch can carry the conditional and the unconditional branch of classifier-free guidance.
    """

    image_embedding: torch.Tensor | None = None
    local_image: torch.Tensor | None = None
    pose_images: torch.Tensor | None = None
    ref_latent: torch.Tensor | None = None
    pose_keypoints: torch.Tensor | None = None
    driving_clip: torch.Tensor | None = None
    local_image_keep: torch.Tensor | None = None
    ref_latent_keep: torch.Tensor | None = None
    ipi_keep: torch.Tensor | None = None
    image_keep: torch.Tensor | None = None
    pose_images_keep: torch.Tensor | None = None


def _combine(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """Product of two optional per-sample keep masks."""
    if a is None or b is None:
        return a if b is None else b
    return a * b.to(a)


class UNetStage(nn.ModuleList):
    """An ordered group of blocks applied one after another (one skip connection per stage)."""

    def forward(self, x: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        for layer in self:
            x = layer(x, ctx)
        return x


class AnimateXDenoiser(nn.Module):
    """The denoiser (3D UNet + conditions + implicit pose indicator) configured by ``DenoiserConfig``."""

    def __init__(self, config: DenoiserConfig):
        super().__init__()
        c = config
        self.config = c
        base, ctx_dim, concat, latent = c.base_channels, c.context_dim, c.concat_channels, c.latent_channels
        emb = c.time_embed_dim
        self.time_embed = nn.Sequential(nn.Linear(base, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.image_projection = nn.Sequential(
            nn.Linear(ctx_dim, ctx_dim), nn.SiLU(), nn.Linear(ctx_dim, ctx_dim * c.num_image_tokens)
        )
        self.ipi = ImplicitPoseIndicator(c.ipi, output_dim=ctx_dim) if c.ipi.enabled else None
        adapter = dict(adapter_heads=c.adapter_heads, adapter_depth=c.adapter_depth, dropout=c.adapter_dropout)
        pool = tuple(c.condition_pool_size) if c.condition_pool_size else None
        self.local_image_encoder = PixelConditionEncoder(concat, 4 * concat, pool_size=pool, **adapter)
        self.pose_image_encoder = PixelConditionEncoder(concat, 4 * concat, pool_size=pool, **adapter)
        self.ref_pose_encoder = PixelConditionEncoder(concat + latent, 4 * concat, pool_size=pool, **adapter)
        self.ref_latent_encoder = LatentConditionEncoder(latent, concat + latent, 4 * concat, **adapter)
        self.condition_dropout = ConditionDropout(c.condition_dropout)
        # The empty-prompt text tokens (official zero_y): set from the CLIP text tower, not trained, not saved.
        self.register_buffer("zero_y", torch.zeros(1, c.num_text_tokens, ctx_dim), persistent=False)
        self._build_unet(c)

    def _build_unet(self, c: DenoiserConfig) -> None:
        widths = c.level_channels
        emb, drop, tdrop = c.time_embed_dim, c.dropout, c.temporal_conv_dropout

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, emb, drop, tdrop)

        def attn(ch: int) -> list[nn.Module]:
            heads = ch // c.head_dim
            layers: list[nn.Module] = [
                SpatialTransformer(
                    ch,
                    heads,
                    c.head_dim,
                    c.context_dim,
                    with_pose_attention=c.ipi.enabled,
                    placement=c.ipi.placement,
                    residual_weight=c.ipi.residual_weight,
                )
            ]
            if c.temporal_attention:
                layers.append(TemporalTransformer(ch, heads, c.head_dim))
            return layers

        first: list[nn.Module] = [InputConv(c.latent_channels + c.concat_channels, c.base_channels, 3, padding=1)]
        if c.temporal_attention:
            first.append(TemporalTransformer(c.base_channels, c.first_temporal_heads, c.head_dim))
        self.input_blocks = nn.ModuleList([UNetStage(first)])
        skip_channels = [c.base_channels]
        scale, ch = 1.0, c.base_channels
        for level, width in enumerate(widths):
            for _ in range(c.num_res_blocks):
                layers = [res(ch, width)] + (attn(width) if scale in c.attn_scales else [])
                ch = width
                self.input_blocks.append(UNetStage(layers))
                skip_channels.append(ch)
            if level != len(widths) - 1:
                self.input_blocks.append(Downsample(ch))
                skip_channels.append(ch)
                scale /= 2.0
        middle = [res(ch, ch), *attn(ch)]  # the middle block always has attention (as official)
        middle.append(res(ch, ch))
        self.middle_block = UNetStage(middle)
        self.output_blocks = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            for j in range(c.num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), width)] + (attn(width) if scale in c.attn_scales else [])
                ch = width
                if level != 0 and j == c.num_res_blocks:
                    layers.append(Upsample(ch))
                    scale *= 2.0
                self.output_blocks.append(UNetStage(layers))
        self.out = nn.Sequential(
            nn.GroupNorm(GROUP_NORM_GROUPS, ch), nn.SiLU(), nn.Conv2d(ch, c.latent_channels, 3, padding=1)
        )
        nn.init.zeros_(self.out[-1].weight)  # the official head zeroes the weight only

    def set_empty_prompt_tokens(self, zero_y: torch.Tensor) -> None:
        """Set the empty-prompt context ``(1, num_text_tokens, context_dim)`` computed by the CLIP text tower."""
        expected = tuple(self.zero_y.shape)
        zero_y = zero_y.reshape(1, *zero_y.shape[-2:]) if zero_y.dim() in (2, 3) else zero_y
        if tuple(zero_y.shape) != expected:
            raise ValueError(f"empty-prompt tokens must have shape {expected}, got {tuple(zero_y.shape)}")
        self.zero_y.copy_(zero_y.to(self.zero_y))

    def checkpoint_blocks(self) -> list[nn.Module]:
        """The blocks an outside strategy may wrap for activation checkpointing (the model never wraps itself)."""
        return [m for m in self.modules() if isinstance(m, ResBlock | SpatialTransformer | TemporalTransformer)]

    def forward(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        conditions: DenoiserConditions | None = None,
        dropout_generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Predict the diffusion target (v) for ``latents`` ``(b, 4, f, h, w)`` at ``timesteps`` ``(b,)``.

        Args:
            latents: noisy latents.
            timesteps: integer timesteps in ``[0, 999]``.
            conditions: the conditions (all None = the unconditional branch).
            dropout_generator: RNG of the train-mode condition dropout (exactly resumable training).

        Returns:
            ``(b, 4, f, h, w)``.
        """
        cond = conditions or DenoiserConditions()
        b, _, f, h, w = self._check_latents(latents, timesteps)
        frames = f + 1
        keep = self.condition_dropout(b, latents.device, dropout_generator)
        not_all_dropped = (~keep.all_dropped).float()
        dropout_config = self.config.condition_dropout
        ref_keep = _combine(
            cond.ref_latent_keep, not_all_dropped if dropout_config.all_dropped_loses_reference else None
        )
        ipi_keep = _combine(cond.ipi_keep, not_all_dropped if dropout_config.all_dropped_loses_ipi else None)

        def masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
            # Selected, not multiplied: a dropped sample gets +0.0 exactly, as the absent condition of the
            # unconditional branch does (x * 0 gives -0.0 for negative x, and NaN for a non-finite one).
            return x if mask is None else torch.where(mask.view(-1, *([1] * (x.dim() - 1))) != 0, x, 0.0)

        concat = latents.new_zeros(b, self.config.concat_channels, f, h, w)
        if cond.local_image is not None:
            local = self._check_pixels("local_image", cond.local_image, b, (1, f))
            embedded = self.local_image_encoder(local, (h, w))
            local_keep = _combine(keep.local_image, cond.local_image_keep)
            concat = concat + masked(embedded.expand(-1, -1, f, -1, -1), local_keep)
        if cond.pose_images is not None:
            pose = self._check_pixels("pose_images", cond.pose_images, b, (frames,))
            pose_keep = _combine(keep.pose_images, cond.pose_images_keep)
            concat = concat + masked(self.pose_image_encoder(pose[:, :, 1:], (h, w)), pose_keep)
        ref_slot = latents.new_zeros(b, self.config.latent_channels + self.config.concat_channels, 1, h, w)
        if cond.ref_latent is not None:
            ref_embedding = self.ref_latent_encoder(cond.ref_latent[:, :, :1])
            if cond.pose_images is not None:
                ref_embedding = ref_embedding + self.ref_pose_encoder(cond.pose_images[:, :, :1], (h, w))
            ref_slot = ref_slot + masked(ref_embedding, ref_keep)
        x = torch.cat([ref_slot, torch.cat([latents, concat], dim=1)], dim=2)  # (b, 4+concat, f+1, h, w)
        x = x.transpose(1, 2).reshape(b * frames, -1, h, w)

        time_embedding = self.time_embed(timestep_embedding(timesteps, self.config.base_channels).to(x.dtype))
        if cond.image_embedding is not None:
            image_tokens = self.image_projection(cond.image_embedding.reshape(b, -1))
            image_keep = _combine(keep.image_tokens, cond.image_keep)
            image_tokens = masked(image_tokens.view(b, self.config.num_image_tokens, -1), image_keep)
        else:  # no image: exact zeros, not the MLP of zeros (official)
            image_tokens = x.new_zeros(b, self.config.num_image_tokens, self.config.context_dim)
        context = torch.cat([self.zero_y.to(image_tokens.dtype).expand(b, -1, -1), image_tokens], dim=1)
        motion_tokens = None
        if self.ipi is not None:
            keypoints, driving_clip = cond.pose_keypoints, cond.driving_clip
            if ipi_keep is not None:  # absent for some samples = the zero inputs of the unconditional branch
                keypoints = None if keypoints is None else masked(keypoints, ipi_keep)
                driving_clip = None if driving_clip is None else masked(driving_clip, ipi_keep)
            motion_tokens = self.ipi(keypoints, driving_clip, b, frames)
        ctx = BlockContext(time_embedding, context, motion_tokens, b, frames)

        skips = []
        for stage in self.input_blocks:
            x = stage(x, ctx)
            skips.append(x)
        x = self.middle_block(x, ctx)
        for stage in self.output_blocks:
            x = stage(torch.cat([x, skips.pop()], dim=1), ctx)
        x = self.out(x)
        return x.view(b, frames, -1, h, w).transpose(1, 2)[:, :, 1:]

    def _check_latents(self, latents: torch.Tensor, timesteps: torch.Tensor) -> tuple[int, int, int, int, int]:
        if latents.dim() != 5 or latents.shape[1] != self.config.latent_channels:
            raise ValueError(f"latents must be (b, {self.config.latent_channels}, f, h, w), got {tuple(latents.shape)}")
        b, c, f, h, w = latents.shape
        factor = self.config.latent_downsample
        if h % factor or w % factor:
            raise ValueError(
                f"latent grid {h}x{w} must be divisible by {factor} (the UNet halves it "
                f"{len(self.config.channel_mult) - 1} times); choose a pixel resolution divisible by {8 * factor}"
            )
        if timesteps.shape != (b,):
            raise ValueError(f"timesteps must have shape ({b},), got {tuple(timesteps.shape)}")
        return b, c, f, h, w

    @staticmethod
    def _check_pixels(name: str, pixels: torch.Tensor, b: int, frame_counts: tuple[int, ...]) -> torch.Tensor:
        if pixels.dim() != 5 or pixels.shape[0] != b or pixels.shape[1] != 3 or pixels.shape[2] not in frame_counts:
            raise ValueError(
                f"conditions.{name} must be (b={b}, 3, f in {frame_counts}, H, W) in [0, 1], got {tuple(pixels.shape)}"
            )
        return pixels
