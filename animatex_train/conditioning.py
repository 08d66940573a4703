"""From a loader ``Batch`` to the denoiser's inputs: scaled latents and ``DenoiserConditions``.

The released inference feeds the reference through the CLIP image tokens and as ``local_image``
(the reference pixels concatenated to every frame), leaving the reference latent slot empty; UniAnimate
also supports the reference latent in that slot (docs/official_release.md §1.4). Training must exercise both paths,
in a proportion the sources do not give [INFERRED], so each sample draws its reference mode here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from animatex_train.data.loading.batch import Batch
from animatex_train.encoders.vae import VAEConfig
from animatex_train.models.condition_dropout import to_device_async
from animatex_train.models.unet import DenoiserConditions

REFERENCE_MODES = ("local_image", "ref_latent", "both")


@dataclass
class ConditioningConfig:
    """How the reference enters the denoiser.

    Attributes:
        local_image_prob: training: per-sample probability of feeding the reference as ``local_image``.
        ref_latent_prob: training: per-sample probability of filling the reference slot with its latent.
            A sample that draws neither gets ``local_image`` (every sample sees its reference somehow).
        sampling_reference_mode: sampling/validation: ``local_image`` (released inference), ``ref_latent``
            or ``both``.
    """

    local_image_prob: float = 1.0
    ref_latent_prob: float = 0.5
    sampling_reference_mode: str = "local_image"

    def __post_init__(self) -> None:
        for name in ("local_image_prob", "ref_latent_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"model.conditioning.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.sampling_reference_mode not in REFERENCE_MODES:
            raise ValueError(
                f"model.conditioning.sampling_reference_mode must be one of {REFERENCE_MODES}, "
                f"got {self.sampling_reference_mode!r}"
            )


def batch_conditions(
    batch: Batch,
    config: ConditioningConfig,
    vae: VAEConfig,
    training: bool,
    generator: torch.Generator | None = None,
    *,
    ref_latents: torch.Tensor,
) -> DenoiserConditions:
    """The conditional-branch inputs for ``batch`` (pixels to [0, 1], reference latent to model space).

    ``ref_latents`` is the raw ``(b, 4, 1, h, w)`` reference latent drawn with ``Batch.sample_posterior``.
    Pose images arrive as cropped palette labels and become RGB images here, on the device (``Batch.pose_images``).
    """
    b, device = batch.batch_size, batch.latent_mean.device
    if training:
        local = (torch.rand(b, generator=generator) < config.local_image_prob).float()
        ref = (torch.rand(b, generator=generator) < config.ref_latent_prob).float()
        local = torch.maximum(local, 1.0 - ref)  # neither drawn -> local image
        # Every branch is always computed in training (absent = a zero keep-mask, not None), so every rank
        # runs the same graph: under DDP a branch that no sample of one rank's batch used would leave its
        # parameters without gradients there, and the gradient all-reduce would wait forever.
        return DenoiserConditions(
            image_embedding=batch.ref_clip,
            local_image=(batch.ref_image.float() / 255.0).unsqueeze(2),
            pose_images=batch.pose_images.float() / 255.0,
            ref_latent=vae.to_model_latents(ref_latents),
            pose_keypoints=batch.ipi_keypoints,
            driving_clip=batch.driving_clip,
            local_image_keep=to_device_async(local, device),
            ref_latent_keep=to_device_async(ref, device),
        )
    mode = config.sampling_reference_mode
    use_local, use_ref = mode in ("local_image", "both"), mode in ("ref_latent", "both")
    return DenoiserConditions(
        image_embedding=batch.ref_clip,
        local_image=(batch.ref_image.float() / 255.0).unsqueeze(2) if use_local else None,
        pose_images=batch.pose_images.float() / 255.0,
        ref_latent=vae.to_model_latents(ref_latents) if use_ref else None,
        pose_keypoints=batch.ipi_keypoints,
        driving_clip=batch.driving_clip,
    )
