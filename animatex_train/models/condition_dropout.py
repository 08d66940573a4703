"""Train-time condition dropout for classifier-free guidance, as its own seeded module.

Reproduces the distribution of UniAnimate/Animate-X's ``DropPath`` scheme (docs/official_release.md §4): per batch,
``n_zero = #(U < p_all_zero)`` and ``n_keep = #(U < p_all_keep)`` over ``b`` uniforms; a random
permutation puts ``n_zero`` samples in the all-dropped group and the next ``n_keep`` in the all-kept
group; then, independently for each condition, ``n = #(U < p_drop_each)`` samples are drawn without
replacement from the rest and dropped too. No rescaling. A dropped condition becomes exact zeros, as if absent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from animatex_train.models.config import ConditionDropoutConfig

DROPPABLE_CONDITIONS = ("local_image", "pose_images", "image_tokens")


@dataclass
class ConditionKeepMasks:
    """Per-sample presence (``(b,)`` floats in {0, 1}; 0 = dropped) of each droppable condition.

    ``all_dropped`` marks the samples in the all-dropped group; the denoiser also drops the conditions
    the official scheme does not cover for them (``ConditionDropoutConfig.all_dropped_loses_*``), so
    they see exactly the inputs of the unconditional sampling branch.
    """

    local_image: torch.Tensor
    pose_images: torch.Tensor
    image_tokens: torch.Tensor
    all_dropped: torch.Tensor


class ConditionDropout(nn.Module):
    """Draws ``ConditionKeepMasks``; all ones in eval mode or when disabled."""

    def __init__(self, config: ConditionDropoutConfig):
        super().__init__()
        self.config = config

    def forward(
        self, batch_size: int, device: torch.device, generator: torch.Generator | None = None
    ) -> ConditionKeepMasks:
        ones = torch.ones(batch_size, device=device)
        if not (self.training and self.config.enabled):
            return ConditionKeepMasks(
                ones, ones.clone(), ones.clone(), torch.zeros(batch_size, dtype=torch.bool, device=device)
            )
        # Draw on the CPU from the given generator so the result does not depend on the device.
        cfg = self.config
        num_zero = int((torch.rand(batch_size, generator=generator) < cfg.p_all_zero).sum())
        num_keep = int((torch.rand(batch_size, generator=generator) < cfg.p_all_keep).sum())
        order = torch.randperm(batch_size, generator=generator)
        all_zero = torch.zeros(batch_size, dtype=torch.bool)
        all_keep = torch.zeros(batch_size, dtype=torch.bool)
        all_zero[order[:num_zero]] = True
        all_keep[order[num_zero : num_zero + num_keep]] = True
        candidates = torch.where(~(all_zero | all_keep))[0]
        masks = []
        for _ in DROPPABLE_CONDITIONS:
            num_drop = int((torch.rand(batch_size, generator=generator) < cfg.p_drop_each).sum())
            dropped = candidates[torch.randperm(len(candidates), generator=generator)[:num_drop]]
            keep = torch.ones(batch_size)
            keep[dropped] = 0.0
            keep[all_zero] = 0.0
            masks.append(to_device_async(keep, device))
        return ConditionKeepMasks(*masks, all_dropped=to_device_async(all_zero, device))


def to_device_async(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A small host tensor on ``device`` without stalling the host: a plain ``.to(cuda)`` from pageable memory
    waits for the stream, so every mask drawn on the CPU would cost a host sync per step. Pinned (PyTorch's
    caching host allocator) then copied asynchronously on CUDA (elsewhere ``non_blocking`` changes nothing)."""
    device = torch.device(device)
    source = tensor.pin_memory() if device.type == "cuda" else tensor
    return source.to(device, non_blocking=True)
