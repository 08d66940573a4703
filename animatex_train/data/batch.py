"""The training batch: the one place where the loader's keys, dtypes and shapes are spelled.

The loader assembles one ``Batch`` per step inside its worker processes: ``allocate_batch`` creates the
batch's tensors up front, as views of one flat buffer (shared memory inside a worker), and each sample is
written straight into its row, so no per-sample tensor is stacked or copied again and handing the batch to
the main process passes one file descriptor. The system moves it to the device and turns it into the
denoiser's conditions; two steps of the sample are done there, where they are free: the posterior draw of
the latents (``sample_posterior``) and the palette lookup of the pose images (``pose_images``).
Shapes use ``f`` generated frames, ``(h, w)`` the latent grid and ``(H, W) = (8h, 8w)`` the conditioning
pixel grid; ``d`` is the CLIP embedding width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from animatex_train.data.keypoints import NUM_BODY
from animatex_train.data.pose_render import POSE_PALETTE
from animatex_train.data.schema import LATENT_CHANNELS, VAE_DOWNSAMPLE

# (3, 256) uint8: channel c of label l is _PALETTE_T[c, l]; per-device copies are cached (768 bytes each).
_PALETTE_T = torch.from_numpy(POSE_PALETTE.T.copy())
_palette_on: dict[torch.device, torch.Tensor] = {}


@dataclass
class Batch:
    """A batch of training clips.

    Attributes:
        keys: sample keys, ``b`` strings (placeholders of unreadable samples keep their planned key).
        latent_mean: ``(b, 4, f + 1, h, w)`` float16 raw (unscaled) VAE posterior mean as stored; frame 0 is
            the reference frame, frames 1..f the window. ``sample_posterior`` draws the latents from it on the
            device, where the noise costs nothing (it was 4-5 ms of a loader core per sample).
        latent_std: ``(b, 4, f + 1, h, w)`` float16 posterior standard deviation, same layout.
        ref_clip: ``(b, d)`` float32 pooled CLIP embedding of the reference frame.
        driving_clip: ``(b, f + 1, d)`` float32; row 0 is the reference frame's, rows 1..f the window's.
        ipi_keypoints: ``(b, f + 1, 2, 18)`` float32 body keypoints for the implicit pose indicator
            (x row, y row; -1 = missing); row 0 is the reference pose.
        pose_labels: ``(b, f + 1, H, W)`` uint8 rendered pose images (after the explicit pose indicator's
            transform) as ``pose_render.POSE_PALETTE`` indices; frame 0 is the reference pose. The RGB
            images are ``pose_images``; labels are a third of the bytes and need no channel transpose.
        ref_image: ``(b, 3, H, W)`` uint8 RGB reference frame.
        valid: ``(b,)`` bool; False marks a placeholder for a sample that could not be read (its loss is
            masked out), which keeps every rank's batch count equal.
        epi_applied: ``(b,)`` bool, whether the explicit pose indicator transformed the sample's poses.
    """

    keys: list[str]
    latent_mean: torch.Tensor
    latent_std: torch.Tensor
    ref_clip: torch.Tensor
    driving_clip: torch.Tensor
    ipi_keypoints: torch.Tensor
    pose_labels: torch.Tensor
    ref_image: torch.Tensor
    valid: torch.Tensor
    epi_applied: torch.Tensor

    @property
    def batch_size(self) -> int:
        return len(self.keys)

    @property
    def num_frames(self) -> int:
        return int(self.latent_mean.shape[2]) - 1

    def sample_posterior(self, generators: Sequence[torch.Generator] | None = None) -> tuple[Tensor, Tensor]:
        """One draw from each sample's stored VAE posterior, as the official encoder takes (not the mode).

        Args:
            generators: one noise generator per sample, on the batch's device (seeded per sample, a sample's
                draw does not depend on its batch or rank; exact resume depends on them); None: global RNG.

        Returns:
            ``(latents, ref_latents)``: ``(b, 4, f, h, w)`` and ``(b, 4, 1, h, w)`` float32 raw latents,
            ``mean + std * N(0, 1)`` (float16 inputs widened exactly, then multiply and add in float32).
        """
        mean, std = self.latent_mean.float(), self.latent_std.float()
        if generators is None:
            noise = torch.randn(mean.shape, device=mean.device, dtype=mean.dtype)
        else:
            if len(generators) != self.batch_size:
                raise ValueError(f"sample_posterior needs one generator per sample, got {len(generators)}")
            row = (1, *mean.shape[1:])
            noise = torch.cat([torch.randn(row, generator=g, device=mean.device, dtype=mean.dtype) for g in generators])
        sample = mean + std * noise
        return sample[:, :, 1:].contiguous(), sample[:, :, :1].contiguous()

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the conditioning images."""
        return int(self.pose_labels.shape[-2]), int(self.pose_labels.shape[-1])

    @property
    def pose_images(self) -> torch.Tensor:
        """``(b, 3, f + 1, H, W)`` uint8 RGB pose images, expanded from ``pose_labels`` on their device.

        Pixel for pixel the images ``pose_render.render_pose`` draws (a palette lookup, no arithmetic), so
        ``pose_images.float() / 255`` is the same tensor as before labels were introduced.
        """
        labels = self.pose_labels
        palette = _palette_on.get(labels.device)
        if palette is None:
            palette = _palette_on.setdefault(labels.device, _PALETTE_T.to(labels.device))
        return palette[:, labels.long()].transpose(0, 1).contiguous()

    def _intact_packing(self) -> tuple[torch.Tensor, _Layout] | None:
        """The flat buffer and layout of a batch from ``allocate_batch`` whose fields are still its views."""
        packed = getattr(self, "_packed", None)
        if packed is not None and all(_same_view(getattr(self, n), v) for n, v in _views(*packed).items()):
            return packed
        return None

    def __reduce__(self):
        """Pickle a batch from ``allocate_batch`` as its one flat buffer (one shared-memory handle to pass)."""
        packed = self._intact_packing()
        if packed is not None:
            return _unpack, (self.keys, *packed)
        return _rebuild, tuple(getattr(self, f.name) for f in fields(self))

    def pin_memory(self) -> Batch:
        """Called by ``DataLoader(pin_memory=True)``: one pinned copy of the flat buffer when there is one."""
        packed = self._intact_packing()
        if packed is not None:
            return _unpack(self.keys, packed[0].pin_memory(), packed[1])
        return Batch(**{f.name: _pin(getattr(self, f.name)) for f in fields(self)})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The batch on ``device``: one copy of the flat buffer when there is one, else field by field."""
        packed = self._intact_packing()
        if packed is not None:
            return _unpack(self.keys, packed[0].to(device, non_blocking=non_blocking), packed[1])
        return Batch(**{f.name: _move(getattr(self, f.name), device, non_blocking) for f in fields(self)})


def _rebuild(*values) -> Batch:
    return Batch(*values)


def _same_view(value: object, view: torch.Tensor) -> bool:
    """Whether a field still is the buffer view it was allocated as (not replaced since)."""
    return (isinstance(value, torch.Tensor) and value.data_ptr() == view.data_ptr() and value.dtype == view.dtype
            and value.shape == view.shape and value.stride() == view.stride())  # fmt: skip


def _pin(value):
    return value.pin_memory() if isinstance(value, torch.Tensor) else value


def _move(value, device, non_blocking):
    return value.to(device, non_blocking=non_blocking) if isinstance(value, torch.Tensor) else value


_ALIGN = 64  # bytes; every field starts on a cache line


def _zeros(nbytes: int, shared: bool) -> torch.Tensor:
    if not shared:
        return torch.zeros(nbytes, dtype=torch.uint8)
    # What DataLoader's default collate does in a worker: allocate in shared memory, so sending the batch to
    # the main process passes a file descriptor instead of copying the bytes into a new segment. The segment
    # is a newly created shared-memory object, which POSIX fills with zeros (torch also fallocates it, so its
    # pages are materialised here, not left for the consumer's page faults); placeholder rows and the undrawn
    # pose background rely on that, and a second zeroing pass would only cost time.
    storage = torch.UntypedStorage._new_shared(nbytes)
    return torch.empty(0, dtype=torch.uint8).set_(storage, 0, (nbytes,))


_Layout = tuple[tuple[str, torch.dtype, tuple[int, ...], int], ...]  # (field, dtype, shape, byte offset)


def _views(flat: torch.Tensor, layout: _Layout) -> dict[str, torch.Tensor]:
    return {
        name: flat[offset : offset + dtype.itemsize * math.prod(shape)].view(dtype).view(shape)
        for name, dtype, shape, offset in layout
    }


def _unpack(keys: list[str], flat: torch.Tensor, layout: _Layout) -> Batch:
    batch = Batch(keys=keys, **_views(flat, layout))
    batch._packed = (flat, layout)
    return batch


def allocate_batch(batch_size: int, num_frames: int, image_size: tuple[int, int], clip_dim: int,
                   shared: bool = False) -> Batch:  # fmt: skip
    """A ``Batch`` of placeholder rows (zeros, missing keypoints, ``valid`` False) to be filled in place.

    All its tensors are views of one flat byte buffer, so handing the batch from a worker to the main process
    passes one file descriptor, not one per tensor: each descriptor costs an authenticated connection to the
    worker's resource-sharer thread, about 1-2 ms, paid while the training step waits in ``next()``.

    Args:
        batch_size: rows ``b``.
        num_frames: generated frames ``f``.
        image_size: ``(H, W)``, a multiple of the VAE factor.
        clip_dim: CLIP width ``d``.
        shared: allocate in shared memory (inside a loader worker process).
    """
    b, f, (height, width) = batch_size, num_frames, image_size
    h, w = height // VAE_DOWNSAMPLE, width // VAE_DOWNSAMPLE
    fields_ = (
        ("latent_mean", torch.float16, (b, LATENT_CHANNELS, f + 1, h, w)),
        ("latent_std", torch.float16, (b, LATENT_CHANNELS, f + 1, h, w)),
        ("ref_clip", torch.float32, (b, clip_dim)),
        ("driving_clip", torch.float32, (b, f + 1, clip_dim)),
        ("ipi_keypoints", torch.float32, (b, f + 1, 2, NUM_BODY)),
        ("pose_labels", torch.uint8, (b, f + 1, height, width)),
        ("ref_image", torch.uint8, (b, 3, height, width)),
        ("valid", torch.bool, (b,)),
        ("epi_applied", torch.bool, (b,)),
    )
    layout, offset = [], 0
    for name, dtype, shape in fields_:
        layout.append((name, dtype, shape, offset))
        offset += -(-dtype.itemsize * math.prod(shape) // _ALIGN) * _ALIGN
    batch = _unpack([""] * b, _zeros(offset, shared), tuple(layout))
    batch.ipi_keypoints.fill_(-1.0)
    return batch


def clear_row(batch: Batch, row: int, key: str) -> None:
    """Turn row ``row`` back into a placeholder for ``key`` (a sample that failed part-way through filling it)."""
    batch.keys[row] = key
    for name in ("latent_mean", "latent_std", "ref_clip", "driving_clip", "pose_labels", "ref_image"):
        getattr(batch, name)[row].zero_()
    batch.ipi_keypoints[row].fill_(-1.0)
    batch.valid[row] = False
    batch.epi_applied[row] = False
