"""The training batch: the one place where the loader's keys, dtypes and shapes are spelled.

The loader assembles one ``Batch`` per step inside its worker processes: ``allocate_batch`` creates the
batch's tensors up front, as views of one flat buffer (shared memory inside a worker, as DataLoader's default
collate allocates), and each sample is written straight into its row, so no per-sample tensor is stacked or
copied again. DataLoader's own transport hands it to the main process; all fields share one storage, so the
pickle carries one file descriptor. The system moves it to the device and turns it into the
denoiser's conditions; three steps of the sample are done there, where they are free: the posterior draw of
the latents (``sample_posterior``), putting the pose-label crops back into whole images (``pose_labels``) and
their palette lookup to RGB (``pose_images``).
Shapes use ``f`` generated frames, ``(h, w)`` the latent grid and ``(H, W) = (8h, 8w)`` the conditioning
pixel grid; ``d`` is the CLIP embedding width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from animatex_train.data.format.keypoints import NUM_BODY
from animatex_train.data.format.schema import LATENT_CHANNELS, VAE_DOWNSAMPLE
from animatex_train.data.pose.style import POSE_PALETTE

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
        pose_crops: ``(n,)`` uint8, the rendered pose images (after the explicit pose indicator's transform) as
            ``pose_render.POSE_PALETTE`` indices, cropped: per sample and frame (frame 0 the reference pose) the
            ``pose_boxes`` window of its ``(H, W)`` label image, row-major, one after another. Only about 3% of
            a pose image is drawn and the crops hold 35-50% of its pixels, so this is what crosses from the loader
            process; ``pose_labels`` and ``pose_images`` give the whole images on the batch's device.
        pose_boxes: ``(b, f + 1, 4)`` int32 ``(top, left, height, width)`` of each crop (all zeros: blank frame).
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
    pose_crops: torch.Tensor
    pose_boxes: torch.Tensor
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
        return int(self.ref_image.shape[-2]), int(self.ref_image.shape[-1])

    @property
    def pose_labels(self) -> torch.Tensor:
        """``(b, f + 1, H, W)`` uint8 palette labels, the crops put back into blank images on their device.

        One masked scatter: the pixels inside the boxes, in row-major order over ``(b, f + 1, H, W)``, are the
        crops' bytes in their stored order. No host synchronisation (the boxes stay on the device).
        """
        b, frames = self.pose_boxes.shape[:2]
        height, width = self.image_size
        device = self.pose_crops.device
        boxes = self.pose_boxes.reshape(-1, 4).long()
        top, left, box_h, box_w = (boxes[:, i, None] for i in range(4))  # (b * (f + 1), 1) each
        rows = torch.arange(height, device=device)
        cols = torch.arange(width, device=device)
        inside_rows = (rows >= top) & (rows < top + box_h)  # (b * (f + 1), H)
        inside_cols = (cols >= left) & (cols < left + box_w)  # (b * (f + 1), W)
        mask = inside_rows[:, :, None] & inside_cols[:, None, :]
        labels = torch.zeros((b * frames, height, width), dtype=torch.uint8, device=device)
        labels.masked_scatter_(mask, self.pose_crops)
        return labels.view(b, frames, height, width)

    @property
    def pose_images(self) -> torch.Tensor:
        """``(b, 3, f + 1, H, W)`` uint8 RGB pose images, expanded from the label crops on their device.

        Pixel for pixel the images ``pose_render.render_pose`` draws (a palette lookup, no arithmetic), so
        ``pose_images.float() / 255`` is the same tensor as before labels were introduced.
        """
        labels = self.pose_labels
        palette = _palette_on.get(labels.device)
        if palette is None:
            palette = _palette_on.setdefault(labels.device, _PALETTE_T.to(labels.device))
        return palette[:, labels.long()].transpose(0, 1).contiguous()

    def row_pose_crops(self, row: int) -> torch.Tensor:
        """The ``(n_row,)`` slice of ``pose_crops`` that holds row ``row``'s frames (reads the boxes on the host)."""
        start, end = _crop_spans(self.pose_boxes)[row]
        return self.pose_crops[start:end]

    def head(self, n: int) -> Batch:
        """The first ``n`` rows (views, no copy)."""
        end = _crop_spans(self.pose_boxes)[n - 1][1] if n > 0 else 0
        values = {f.name: getattr(self, f.name)[:n] for f in fields(self) if f.name != "pose_crops"}
        return Batch(pose_crops=self.pose_crops[:end], **values)

    @staticmethod
    def concat(batches: Sequence[Batch]) -> Batch:
        """The rows of ``batches`` as one batch (copies)."""
        values = {}
        for f in fields(Batch):
            parts = [getattr(b, f.name) for b in batches]
            values[f.name] = torch.cat(parts) if isinstance(parts[0], torch.Tensor) else sum(parts, [])
        return Batch(**values)

    def pin_memory(self) -> Batch:
        """Called by ``DataLoader(pin_memory=True)``: the batch with every tensor in pinned memory."""
        return Batch(**{f.name: _pin(getattr(self, f.name)) for f in fields(self)})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The batch on ``device`` (Lightning calls this to move it)."""
        return Batch(**{f.name: _move(getattr(self, f.name), device, non_blocking) for f in fields(self)})


def _crop_spans(boxes: torch.Tensor) -> list[tuple[int, int]]:
    """``(start, end)`` in ``pose_crops`` of every row's crops, from ``(b, f + 1, 4)`` boxes."""
    areas = (boxes[..., 2].long() * boxes[..., 3].long()).sum(dim=1).tolist()
    spans, start = [], 0
    for area in areas:
        spans.append((start, start + area))
        start += area
    return spans


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


def allocate_batch(
    batch_size: int,
    num_frames: int,
    image_size: tuple[int, int],
    clip_dim: int,
    shared: bool = False,
    pose_boxes: Sequence[np.ndarray | None] | None = None,
) -> Batch:
    """A ``Batch`` of placeholder rows (zeros, missing keypoints, ``valid`` False) to be filled in place.

    All its tensors are views of one flat byte buffer, so handing the batch from a worker to the main process
    passes one file descriptor, not one per tensor (the pickler sends a shared storage once): each descriptor
    costs an authenticated connection to the worker's resource-sharer thread, about 1-2 ms.

    Args:
        batch_size: rows ``b``.
        num_frames: generated frames ``f``.
        image_size: ``(H, W)``, a multiple of the VAE factor.
        clip_dim: CLIP width ``d``.
        shared: allocate in shared memory (inside a loader worker process).
        pose_boxes: per row the ``(f + 1, 4)`` pose-label boxes it will draw (``pose_render.pose_label_boxes``),
            or None for a row that stays a placeholder (blank frames); None: every row blank.
    """
    b, f, (height, width) = batch_size, num_frames, image_size
    h, w = height // VAE_DOWNSAMPLE, width // VAE_DOWNSAMPLE
    boxes = np.zeros((b, f + 1, 4), dtype=np.int32)
    for row, row_boxes in enumerate(pose_boxes or ()):
        if row_boxes is not None:
            boxes[row] = row_boxes
    crop_bytes = int((boxes[..., 2].astype(np.int64) * boxes[..., 3]).sum())
    fields_ = (
        ("latent_mean", torch.float16, (b, LATENT_CHANNELS, f + 1, h, w)),
        ("latent_std", torch.float16, (b, LATENT_CHANNELS, f + 1, h, w)),
        ("ref_clip", torch.float32, (b, clip_dim)),
        ("driving_clip", torch.float32, (b, f + 1, clip_dim)),
        ("ipi_keypoints", torch.float32, (b, f + 1, 2, NUM_BODY)),
        ("pose_crops", torch.uint8, (crop_bytes,)),
        ("pose_boxes", torch.int32, (b, f + 1, 4)),
        ("ref_image", torch.uint8, (b, 3, height, width)),
        ("valid", torch.bool, (b,)),
        ("epi_applied", torch.bool, (b,)),
    )
    layout, offset = [], 0
    for name, dtype, shape in fields_:
        layout.append((name, dtype, shape, offset))
        offset += -(-dtype.itemsize * math.prod(shape) // _ALIGN) * _ALIGN
    batch = Batch(keys=[""] * b, **_views(_zeros(offset, shared), tuple(layout)))
    batch.ipi_keypoints.fill_(-1.0)
    batch.pose_boxes.copy_(torch.from_numpy(boxes))
    return batch


def clear_row(batch: Batch, row: int, key: str) -> None:
    """Turn row ``row`` back into a placeholder for ``key`` (a sample that failed part-way through filling it).

    Its pose crops are blanked in place; their boxes stay, so the other rows' crops keep their positions.
    """
    batch.keys[row] = key
    for name in ("latent_mean", "latent_std", "ref_clip", "driving_clip", "ref_image"):
        getattr(batch, name)[row].zero_()
    batch.row_pose_crops(row).zero_()
    batch.ipi_keypoints[row].fill_(-1.0)
    batch.valid[row] = False
    batch.epi_applied[row] = False
