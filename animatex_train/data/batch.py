"""The training batch: the one place where the loader's keys, dtypes and shapes are spelled.

The loader assembles one ``Batch`` per step inside its worker processes (collating there keeps the
inter-process traffic to one object per step); the system moves it to the device and turns it into
the denoiser's conditions. Shapes use ``f`` generated frames, ``(h, w)`` the latent grid and
``(H, W) = (8h, 8w)`` the conditioning pixel grid; ``d`` is the CLIP embedding width.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class Batch:
    """A batch of training clips.

    Attributes:
        keys: sample keys, ``b`` strings (placeholders of unreadable samples keep their planned key).
        latents: ``(b, 4, f, h, w)`` float32 raw VAE latents sampled from the stored posterior (not scaled).
        ref_latents: ``(b, 4, 1, h, w)`` float32 raw latent of the reference frame.
        ref_clip: ``(b, d)`` float32 pooled CLIP embedding of the reference frame.
        driving_clip: ``(b, f + 1, d)`` float32; row 0 is the reference frame's, rows 1..f the window's.
        ipi_keypoints: ``(b, f + 1, 2, 18)`` float32 body keypoints for the implicit pose indicator
            (x row, y row; -1 = missing); row 0 is the reference pose.
        pose_images: ``(b, 3, f + 1, H, W)`` uint8 rendered pose images (after the explicit pose
            indicator's transform); frame 0 is the reference pose.
        ref_image: ``(b, 3, H, W)`` uint8 RGB reference frame.
        valid: ``(b,)`` bool; False marks a placeholder for a sample that could not be read (its loss is
            masked out), which keeps every rank's batch count equal.
        epi_applied: ``(b,)`` bool, whether the explicit pose indicator transformed the sample's poses.
    """

    keys: list[str]
    latents: torch.Tensor
    ref_latents: torch.Tensor
    ref_clip: torch.Tensor
    driving_clip: torch.Tensor
    ipi_keypoints: torch.Tensor
    pose_images: torch.Tensor
    ref_image: torch.Tensor
    valid: torch.Tensor
    epi_applied: torch.Tensor

    @property
    def batch_size(self) -> int:
        return len(self.keys)

    @property
    def num_frames(self) -> int:
        return int(self.latents.shape[2])

    def pin_memory(self) -> Batch:
        """Called by ``DataLoader(pin_memory=True)``."""
        return Batch(**{f.name: _pin(getattr(self, f.name)) for f in fields(self)})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(**{f.name: _move(getattr(self, f.name), device, non_blocking) for f in fields(self)})


def _pin(value):
    return value.pin_memory() if isinstance(value, torch.Tensor) else value


def _move(value, device, non_blocking):
    return value.to(device, non_blocking=non_blocking) if isinstance(value, torch.Tensor) else value


def collate(samples: list[dict[str, torch.Tensor | str | bool]]) -> Batch:
    """Stack per-sample dicts (same keys as ``Batch``'s fields, without the batch axis) into a ``Batch``."""
    out = {}
    for f in fields(Batch):
        values = [s[f.name] for s in samples]
        if f.name == "keys":
            out[f.name] = [str(v) for v in values]
        elif f.name in ("valid", "epi_applied"):
            out[f.name] = torch.tensor(values, dtype=torch.bool)
        else:
            out[f.name] = torch.stack(values)
    return Batch(**out)
