"""Tiny denoiser inputs and weight randomisation for model tests."""

from __future__ import annotations

import torch

from animatex_train.models.config import DenoiserConfig
from animatex_train.models.unet import DenoiserConditions

B, F, H, W = 2, 4, 8, 8  # latent grid 8x8 <-> 64x64 pixels


def tiny_inputs(config: DenoiserConfig, seed: int = 0, b: int = B, f: int = F) -> tuple:
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(b, 4, f, H, W, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    cond = DenoiserConditions(
        image_embedding=torch.randn(b, config.context_dim, generator=g),
        local_image=torch.rand(b, 3, 1, 8 * H, 8 * W, generator=g),
        pose_images=torch.rand(b, 3, f + 1, 8 * H, 8 * W, generator=g),
        ref_latent=torch.randn(b, 4, 1, H, W, generator=g),
        pose_keypoints=torch.rand(b, f + 1, 2, 18, generator=g),
        driving_clip=torch.randn(b, f + 1, config.ipi.clip_dim, generator=g),
    )
    return latents, t, cond


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Overwrite every parameter (zero-initialised ones too) so every path affects the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / max(1, p[0].numel()) ** 0.5)
