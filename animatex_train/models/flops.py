"""Forward FLOPs of the denoiser for a clip shape, counted on the meta device (no memory, no GPU).

Used by ``benchmarks/denoiser_flops.py`` and by the throughput/MFU instrumentation, which multiplies
by 3 for training (forward + backward, docs/performance.md §2.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from animatex_train.models.config import DenoiserConfig
from animatex_train.models.unet import AnimateXDenoiser, DenoiserConditions


@dataclass(frozen=True)
class FlopCount:
    """Result of ``count_forward_flops``: parameters, total forward FLOPs per sample, FLOPs per top module."""

    params: int
    forward_flops: int
    by_module: dict[str, int]


def count_forward_flops(config: DenoiserConfig, num_frames: int, height: int, width: int) -> FlopCount:
    """FLOPs of one forward pass of one sample with every condition present (the conditional branch).

    Args:
        config: the denoiser configuration.
        num_frames: generated frames ``f`` (the network runs on ``f + 1``).
        height: pixel height (latents are ``height / 8``).
        width: pixel width.
    """
    with torch.device("meta"):
        # No gradients: under no_grad a view of a parameter (the IPI's learnable query, expanded) still requires
        # grad but has no grad_fn, which the FLOP counter's module tracker rejects (query="learned", w/o DQ).
        model = AnimateXDenoiser(config).eval().requires_grad_(False)
        h, w, f = height // 8, width // 8, num_frames
        conditions = DenoiserConditions(
            image_embedding=torch.empty(1, config.context_dim),
            local_image=torch.empty(1, 3, 1, height, width),
            pose_images=torch.empty(1, 3, f + 1, height, width),
            ref_latent=torch.empty(1, config.latent_channels, 1, h, w),
            pose_keypoints=torch.empty(1, f + 1, 2, config.ipi.num_keypoints),
            driving_clip=torch.empty(1, f + 1, config.ipi.clip_dim),
        )
        latents = torch.empty(1, config.latent_channels, f, h, w)
        timesteps = torch.zeros(1, dtype=torch.long)
        counter = FlopCounterMode(display=False, depth=2)
        with counter, torch.no_grad():
            model(latents, timesteps, conditions)
    by_module: dict[str, int] = {}
    for name, ops in counter.get_flop_counts().items():
        parts = name.split(".")
        # Top-level modules are counted at depth 1, except module lists (the UNet stages), which have
        # no forward of their own and are counted through their depth-2 children.
        if (len(parts) == 2 and parts[1] not in ("input_blocks", "output_blocks")) or (
            len(parts) == 3 and parts[1] in ("input_blocks", "output_blocks")
        ):
            by_module[parts[1]] = by_module.get(parts[1], 0) + sum(ops.values())
    return FlopCount(
        params=sum(p.numel() for p in model.parameters()),
        forward_flops=counter.get_total_flops(),
        by_module=dict(sorted(by_module.items(), key=lambda kv: -kv[1])),
    )
