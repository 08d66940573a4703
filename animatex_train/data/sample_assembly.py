"""Per-sample assembly: a decoded clip -> one training sample (window, reference, EPI, pose images).

Runs in the loader's worker processes, writing each sample straight into its row of the step's
preallocated ``Batch``. Every random choice (window start, reference frame and the EPI draw) comes from
generators seeded by ``(seed, epoch, sample draw id)`` only, so a resumed or re-sharded run assembles the
same sample identically on any rank and worker. The posterior noise is drawn on the device by the step,
from a per-sample seed (``Batch.sample_posterior``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from animatex_train.data.batch import Batch
from animatex_train.data.epi import EPITransform
from animatex_train.data.epoch_plan import rng_for
from animatex_train.data.pose_render import render_pose_labels
from animatex_train.data.schema import ClipRecord, SampleError, check_latent_values


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
                    epi: EPITransform | None, out: Batch, row: int) -> None:  # fmt: skip
    """Build one training sample into row ``row`` of ``out`` (from ``batch.allocate_batch``; see ``Batch``).

    Raises:
        SampleError, KeypointError: unusable data; ``out`` may then hold part of the sample, so the caller
            turns the row back into a placeholder (``batch.clear_row``).
    """
    meta = record.meta
    if meta.num_frames < window.span:
        raise SampleError(f"sample {record.key!r} has {meta.num_frames} frames, the window needs {window.span}")
    height, width = meta.height, meta.width
    if (height, width) != out.image_size:
        raise SampleError(f"sample {record.key!r} is {height}x{width}, its manifest bucket is {out.image_size}")
    if record.clip_embeds.shape[1] != out.driving_clip.shape[-1]:
        raise SampleError(f"sample {record.key!r}: CLIP width {record.clip_embeds.shape[1]}, the run expects "
                          f"{out.driving_clip.shape[-1]}")  # fmt: skip
    rng = rng_for("sample", seed, epoch, draw_id)
    start = int(rng.integers(0, meta.num_frames - window.span + 1))
    frames = np.arange(start, start + window.span, window.frame_stride)
    ref_index = int(meta.ref_frames[int(rng.integers(len(meta.ref_frames)))])
    ref_slot = meta.ref_frames.index(ref_index)

    idx = np.concatenate([[ref_index], frames])
    _copy_posterior(record, ref_index, start, window, out.latent_mean[row].numpy(), out.latent_std[row].numpy())

    driving_pose = record.pose.select(frames)
    ref_pose = record.pose.select([ref_index])
    if epi is not None:
        result = epi(driving_pose, epoch=epoch, sample_key=draw_id, reference_pose=ref_pose)
        draw_pose, draw_ref = result.pose, result.reference_pose
        ipi_pose, ipi_ref, applied = result.ipi_pose, result.ipi_reference_pose, bool(result.plan.applied)
    else:
        draw_pose, draw_ref, ipi_pose, ipi_ref, applied = driving_pose, ref_pose, driving_pose, ref_pose, False
    # Drawn straight into the batch (zeroed at allocation, so no clearing pass); the device expands labels to RGB.
    labels = out.pose_labels[row].numpy()
    name = f"sample {record.key!r}"
    render_pose_labels(draw_ref, (height, width), out=labels[:1], name=f"{name} reference pose", out_is_blank=True)
    render_pose_labels(draw_pose, (height, width), out=labels[1:], name=name, out_is_blank=True)
    out.ipi_keypoints[row, :1] = torch.from_numpy(ipi_ref.ipi_keypoints())
    out.ipi_keypoints[row, 1:] = torch.from_numpy(ipi_pose.ipi_keypoints())  # (f+1, 2, 18) in all

    out.driving_clip[row] = torch.from_numpy(record.clip_embeds[idx])  # (f+1, d), row 0 the reference frame
    out.ref_clip[row] = out.driving_clip[row, 0]
    _decode_reference(record, ref_slot, out.ref_image[row].numpy())
    out.keys[row], out.valid[row], out.epi_applied[row] = record.key, True, applied


def _copy_posterior(record: ClipRecord, ref_index: int, start: int, window: WindowConfig, mean_out: np.ndarray,
                    std_out: np.ndarray) -> None:  # fmt: skip
    """Copy the posterior of the reference frame and the window into ``(4, f + 1, h, w)`` rows, and check it.

    Only the used frames are read (and checked for NaN/inf), straight from the shard bytes into the batch in
    its (channel, frame) layout. The draw ``mean + std * N(0, 1)`` happens on the device
    (``Batch.sample_posterior``).
    """
    frames = slice(start, start + window.span, window.frame_stride)
    for source, out in ((record.latent_mean, mean_out), (record.latent_std, std_out)):
        layout = out.transpose(1, 0, 2, 3)  # (f + 1, 4, h, w) view of the row
        layout[0] = source[ref_index]
        layout[1:] = source[frames]
    check_latent_values(record.key, mean_out, std_out)


def _decode_reference(record: ClipRecord, slot: int, out: np.ndarray) -> None:
    """Decode ``ref{slot}.jpg`` into ``out``, ``(3, H, W)`` uint8 RGB planes."""
    image = cv2.imdecode(np.frombuffer(record.ref_jpegs[slot], dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise SampleError(f"sample {record.key!r}: ref{slot}.jpg is not a decodable JPEG")
    height, width = out.shape[1:]
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    blue, green, red = cv2.split(image)  # OpenCV decodes BGR; planes in RGB order are the layout the model takes
    out[0], out[1], out[2] = red, green, blue
