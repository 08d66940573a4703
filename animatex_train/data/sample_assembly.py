"""Per-sample assembly: a decoded clip -> one training sample (window, reference, EPI, pose images).

Runs in the loader's worker processes. Every random choice (window start, reference frame, posterior
noise, and the EPI draw) comes from generators seeded by ``(seed, epoch, sample draw id)`` only, so a
resumed or re-sharded run assembles the same sample identically on any rank and worker.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from animatex_train.data.epi import EPITransform
from animatex_train.data.epoch_plan import rng_for
from animatex_train.data.keypoints import NUM_BODY
from animatex_train.data.pose_render import render_pose
from animatex_train.data.schema import LATENT_CHANNELS, VAE_DOWNSAMPLE, ClipRecord, SampleError


@dataclass(frozen=True)
class WindowConfig:
    """Which frames of a clip a sample uses.

    Attributes:
        num_frames: generated frames per sample (the paper: 32).
        frame_stride: step between used frames, in stored frames.
    """

    num_frames: int = 32
    frame_stride: int = 1

    def __post_init__(self) -> None:
        if self.num_frames < 1 or self.frame_stride < 1:
            raise ValueError(
                f"data.num_frames and data.frame_stride must be >= 1, got {self.num_frames}, {self.frame_stride}"
            )

    @property
    def span(self) -> int:
        """Stored frames a window covers (a clip needs at least this many)."""
        return (self.num_frames - 1) * self.frame_stride + 1


def assemble_sample(record: ClipRecord, draw_id: str, epoch: int, seed: int, window: WindowConfig,
                    epi: EPITransform | None) -> dict:  # fmt: skip
    """Build the per-sample tensors of a ``Batch`` (see ``batch.Batch`` for shapes)."""
    meta = record.meta
    if meta.num_frames < window.span:
        raise SampleError(f"sample {record.key!r} has {meta.num_frames} frames, the window needs {window.span}")
    rng = rng_for("sample", seed, epoch, draw_id)
    start = int(rng.integers(0, meta.num_frames - window.span + 1))
    frames = np.arange(start, start + window.span, window.frame_stride)
    ref_index = int(meta.ref_frames[int(rng.integers(len(meta.ref_frames)))])
    ref_slot = meta.ref_frames.index(ref_index)

    # Sample the stored VAE posterior, as the official encoder does (it does not take the mode).
    idx = np.concatenate([[ref_index], frames])
    mean = record.latent_mean[idx].astype(np.float32)
    std = record.latent_std[idx].astype(np.float32)
    latents = mean + std * rng.standard_normal(mean.shape, dtype=np.float32)  # (f+1, 4, h, w)

    height, width = meta.height, meta.width
    driving_pose = record.pose.select(frames)
    ref_pose = record.pose.select([ref_index])
    if epi is not None:
        out = epi(driving_pose, epoch=epoch, sample_key=draw_id, reference_pose=ref_pose)
        draw_pose, draw_ref, ipi_pose, ipi_ref = out.pose, out.reference_pose, out.ipi_pose, out.ipi_reference_pose
        applied = bool(out.plan.applied)
    else:
        draw_pose, draw_ref, ipi_pose, ipi_ref, applied = driving_pose, ref_pose, driving_pose, ref_pose, False
    pose_images = np.empty((window.num_frames + 1, height, width, 3), dtype=np.uint8)
    render_pose(draw_ref, size=(height, width), out=pose_images[:1], name=f"sample {record.key!r} reference pose")
    render_pose(draw_pose, size=(height, width), out=pose_images[1:], name=f"sample {record.key!r}")
    keypoints = np.concatenate([ipi_ref.ipi_keypoints(), ipi_pose.ipi_keypoints()])  # (f+1, 2, 18)

    clip = record.clip_embeds.astype(np.float32)
    ref_image = _decode_reference(record, ref_slot, height, width)
    return {
        "keys": record.key,
        "latents": torch.from_numpy(np.ascontiguousarray(latents[1:].transpose(1, 0, 2, 3))),
        "ref_latents": torch.from_numpy(np.ascontiguousarray(latents[:1].transpose(1, 0, 2, 3))),
        "ref_clip": torch.from_numpy(clip[ref_index]),
        "driving_clip": torch.from_numpy(clip[idx]),
        "ipi_keypoints": torch.from_numpy(keypoints),
        "pose_images": torch.from_numpy(pose_images).permute(3, 0, 1, 2).contiguous(),
        "ref_image": torch.from_numpy(ref_image).permute(2, 0, 1).contiguous(),
        "valid": True,
        "epi_applied": applied,
    }


def _decode_reference(record: ClipRecord, slot: int, height: int, width: int) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(record.ref_jpegs[slot], dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise SampleError(f"sample {record.key!r}: ref{slot}.jpg is not a decodable JPEG")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return image


def placeholder_sample(key: str, bucket: tuple[int, int], window: WindowConfig, clip_dim: int) -> dict:
    """Zeros of the right shapes, ``valid=False``: stands in for an unreadable sample so ranks stay in step."""
    height, width = bucket
    h, w, f = height // VAE_DOWNSAMPLE, width // VAE_DOWNSAMPLE, window.num_frames
    return {
        "keys": key,
        "latents": torch.zeros(LATENT_CHANNELS, f, h, w),
        "ref_latents": torch.zeros(LATENT_CHANNELS, 1, h, w),
        "ref_clip": torch.zeros(clip_dim),
        "driving_clip": torch.zeros(f + 1, clip_dim),
        "ipi_keypoints": torch.full((f + 1, 2, NUM_BODY), -1.0),
        "pose_images": torch.zeros(3, f + 1, height, width, dtype=torch.uint8),
        "ref_image": torch.zeros(3, height, width, dtype=torch.uint8),
        "valid": False,
        "epi_applied": False,
    }
