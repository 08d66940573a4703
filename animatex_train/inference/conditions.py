"""The denoiser's inputs for one clip, assembled as the released worker assembles them (docs/inference.md).

``ClipInputs`` holds one clip's prepared pieces (pixels in [0, 1], keypoints, CLIP features); ``clip_conditions``
turns them into ``DenoiserConditions`` for the conditional branch. The unconditional branch is every condition
None (``None`` conditions), exactly the released ``uncond`` kwargs; ``guidance_batch`` puts both branches in one
batch of two through the per-sample keep masks, which give the unconditional sample the same inputs as None.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from animatex_train.models.unet import DenoiserConditions


@dataclass
class ClipInputs:
    """One clip's conditioning, before assembly.

    Attributes:
        reference: ``(3, H, W)`` the fitted reference, RGB in [0, 1].
        pose_images: ``(f + 1, 3, H, W)`` pose images in [0, 1]; frame 0 is the reference pose.
        keypoints: ``(f + 1, 2, 18)`` body keypoints (x row, y row; -1 = missing); frame 0 is the reference's.
        image_embedding: ``(context_dim,)`` CLIP embedding of the reference (the cross-attention image tokens).
        driving_clip: ``(f + 1, clip_dim)`` CLIP embeddings; row 0 is the reference's, rows 1..f the driving frames'.
        ref_latent: ``(4, 1, h, w)`` model-space VAE latent of the reference, for the ``ref_latent`` slot.
    """

    reference: torch.Tensor
    pose_images: torch.Tensor
    keypoints: torch.Tensor
    image_embedding: torch.Tensor
    driving_clip: torch.Tensor
    ref_latent: torch.Tensor | None = None

    @property
    def num_frames(self) -> int:
        """f, the generated frames."""
        return int(self.pose_images.shape[0]) - 1

    def check(self) -> None:
        """Raise a ValueError naming the piece whose frame count or layout is off."""
        f = self.num_frames
        if self.reference.dim() != 3 or self.pose_images.dim() != 4:
            raise ValueError("reference must be (3, H, W) and pose_images (f + 1, 3, H, W)")
        if tuple(self.pose_images.shape[2:]) != tuple(self.reference.shape[1:]):
            raise ValueError(
                f"pose images are {tuple(self.pose_images.shape[2:])}, the reference "
                f"{tuple(self.reference.shape[1:])}; both must have the canvas size"
            )
        for name, value in (("keypoints", self.keypoints), ("driving_clip", self.driving_clip)):
            if value.shape[0] != f + 1:
                raise ValueError(f"{name} has {value.shape[0]} frames, expected f + 1 = {f + 1} (reference first)")


def clip_conditions(
    inputs: ClipInputs,
    ref_mode: str = "local_image",
    repeat_local_image: bool = False,
    device: torch.device | str | None = None,
) -> DenoiserConditions:
    """The conditional branch for a batch of one clip.

    Args:
        inputs: the clip's pieces.
        ref_mode: ``local_image`` (released: the reference pixels concatenated to every frame), ``ref_latent``
            (the reference latent in the reference slot, with the reference pose) or ``both``.
        repeat_local_image: pass the reference as f identical frames, as the released worker does, instead of
            one frame the denoiser broadcasts (the same function up to float rounding, f times cheaper).
        device: where the tensors go.

    Returns:
        ``DenoiserConditions`` with batch 1.
    """
    inputs.check()
    f = inputs.num_frames
    use_local, use_latent = ref_mode in ("local_image", "both"), ref_mode in ("ref_latent", "both")
    if use_latent and inputs.ref_latent is None:
        raise ValueError(f"--ref_mode {ref_mode} needs the reference latent (the VAE encode of the reference)")
    local = inputs.reference[None, :, None]  # (1, 3, 1, H, W)
    if repeat_local_image:
        local = local.expand(-1, -1, f, -1, -1)
    conditions = DenoiserConditions(
        image_embedding=inputs.image_embedding[None],
        local_image=local if use_local else None,
        pose_images=inputs.pose_images.transpose(0, 1)[None],  # (1, 3, f + 1, H, W)
        ref_latent=inputs.ref_latent[None] if use_latent else None,
        pose_keypoints=inputs.keypoints[None],
        driving_clip=inputs.driving_clip[None],
    )
    return conditions_to(conditions, device)


def conditions_to(
    conditions: DenoiserConditions, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> DenoiserConditions:
    """Move every tensor (floating ones also to ``dtype``)."""
    changes = {}
    for name, value in vars(conditions).items():
        if isinstance(value, torch.Tensor):
            target = dtype if dtype is not None and value.is_floating_point() else value.dtype
            changes[name] = value.to(device=device if device is not None else value.device, dtype=target)
    return replace(conditions, **changes)


def guidance_batch(conditions: DenoiserConditions) -> DenoiserConditions:
    """Batch 1 conditions -> batch 2: sample 0 conditional, sample 1 unconditional (every keep mask 0).

    The denoiser gives the masked sample the exact inputs of ``DenoiserConditions()`` (zero image tokens, no
    concatenated conditions, an empty reference slot, zero IPI inputs); batched kernels may round differently
    from two batch-1 calls. Needs the per-sample keypoint order (``keypoint_row_order: per_sample``): the
    official order pairs each sample's motion tokens with the other sample's keypoints.
    """
    changes: dict[str, torch.Tensor] = {}
    device = None
    for name, value in vars(conditions).items():
        if isinstance(value, torch.Tensor) and not name.endswith("_keep"):
            if value.shape[0] != 1:
                raise ValueError(f"guidance_batch expects batch 1 conditions, {name} has batch {value.shape[0]}")
            changes[name] = torch.cat([value, value])
            device = value.device
    keep = torch.tensor([1.0, 0.0], device=device)
    for mask in ("local_image_keep", "ref_latent_keep", "ipi_keep", "image_keep", "pose_images_keep"):
        changes[mask] = keep
    return replace(conditions, **changes)
