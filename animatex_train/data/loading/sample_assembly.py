"""Per-sample assembly: a decoded clip -> one training sample (window, reference, EPI, pose images).

Runs in the loader's worker processes in two steps. ``prepare_sample`` makes every choice and transform that
decides the sample's size: the window, the reference frame, the EPI draw and the boxes of the pose images that
will hold drawn pixels. Once a batch's samples are prepared, the batch is allocated at its exact size and
``write_sample`` writes each sample straight into its row (posterior, pose-label crops, keypoints, CLIP
features, reference image). Every random choice comes from generators seeded by ``(seed, epoch, sample draw
id)`` only, so a resumed or re-sharded run assembles the same sample identically on any rank and worker. The
posterior noise is drawn on the device by the step, from a per-sample seed (``Batch.sample_posterior``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from animatex_train.data.epi.transform import EPITransform
from animatex_train.data.format.keypoints import PoseSequence, concat_poses
from animatex_train.data.format.schema import ClipRecord, SampleError, check_latent_values
from animatex_train.data.loading.batch import Batch
from animatex_train.data.loading.epoch_plan import rng_for
from animatex_train.data.pose.render import pose_label_boxes, render_pose_label_crops


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


@dataclass(frozen=True)
class PreparedSample:
    """A sample whose choices are made, ready to be written into a batch row.

    Attributes:
        record: the decoded clip.
        frames: the stored frames of the window.
        ref_index: stored frame used as the reference; ``ref_slot`` its index in ``record.meta.ref_frames``.
        draw_pose: ``f + 1`` frames of keypoints to draw, the reference pose first (after EPI).
        ipi_keypoints: ``(f + 1, 2, 18)`` float32 keypoints for the implicit pose indicator, reference first.
        epi_applied: whether the explicit pose indicator transformed the poses.
        pose_boxes: ``(f + 1, 4)`` boxes of ``draw_pose``'s drawn pixels (``pose_render.pose_label_boxes``).
    """

    record: ClipRecord
    frames: slice
    ref_index: int
    ref_slot: int
    draw_pose: PoseSequence
    ipi_keypoints: np.ndarray
    epi_applied: bool
    pose_boxes: np.ndarray


def prepare_sample(
    record: ClipRecord,
    draw_id: str,
    epoch: int,
    seed: int,
    window: WindowConfig,
    epi: EPITransform | None,
    image_size: tuple[int, int],
    clip_dim: int,
) -> PreparedSample:
    """Check the clip against the run, draw the window and the reference, transform the poses (EPI).

    Raises:
        SampleError, KeypointError: unusable data (the sample becomes a placeholder).
    """
    meta = record.meta
    if meta.num_frames < window.span:
        raise SampleError(f"sample {record.key!r} has {meta.num_frames} frames, the window needs {window.span}")
    if (meta.height, meta.width) != tuple(image_size):
        raise SampleError(
            f"sample {record.key!r} is {meta.height}x{meta.width}, its manifest bucket is "
            f"{image_size[0]}x{image_size[1]}"
        )
    if record.clip_embeds.shape[1] != clip_dim:
        raise SampleError(
            f"sample {record.key!r}: CLIP width {record.clip_embeds.shape[1]}, the run expects {clip_dim}"
        )
    rng = rng_for("sample", seed, epoch, draw_id)
    start = int(rng.integers(0, meta.num_frames - window.span + 1))
    frames = slice(start, start + window.span, window.frame_stride)
    ref_index = int(meta.ref_frames[int(rng.integers(len(meta.ref_frames)))])

    driving_pose = record.pose.select(np.arange(meta.num_frames)[frames])
    ref_pose = record.pose.select([ref_index])
    if epi is not None:
        result = epi(driving_pose, epoch=epoch, sample_key=draw_id, reference_pose=ref_pose)
        draw_pose, draw_ref = result.pose, result.reference_pose
        ipi_pose, ipi_ref, applied = result.ipi_pose, result.ipi_reference_pose, bool(result.plan.applied)
    else:
        draw_pose, draw_ref, ipi_pose, ipi_ref, applied = driving_pose, ref_pose, driving_pose, ref_pose, False
    draw_all = concat_poses(draw_ref, draw_pose)  # (f + 1) frames, the reference pose first
    return PreparedSample(
        record=record,
        frames=frames,
        ref_index=ref_index,
        ref_slot=meta.ref_frames.index(ref_index),
        draw_pose=draw_all,
        ipi_keypoints=np.concatenate([ipi_ref.ipi_keypoints(), ipi_pose.ipi_keypoints()]),
        epi_applied=applied,
        pose_boxes=pose_label_boxes(draw_all, image_size, name=f"sample {record.key!r}"),
    )


def write_sample(sample: PreparedSample, out: Batch, row: int) -> None:
    """Write a prepared sample into row ``row`` of ``out`` (``batch.allocate_batch`` with its boxes there).

    Raises:
        SampleError: unusable data found while copying (non-finite latents, an undecodable JPEG); ``out`` may
            then hold part of the sample, so the caller turns the row back into a placeholder
            (``batch.clear_row``).
    """
    record = sample.record
    if not np.array_equal(out.pose_boxes[row].numpy(), sample.pose_boxes):
        raise ValueError(f"sample {record.key!r}: batch row {row} was allocated for other pose boxes")
    _copy_posterior(record, sample.ref_index, sample.frames, out.latent_mean[row].numpy(), out.latent_std[row].numpy())
    # Drawn straight into the batch (zeroed at allocation, so no clearing pass); the device puts the crops back
    # into whole images and expands the labels to RGB.
    render_pose_label_crops(
        sample.draw_pose,
        sample.pose_boxes,
        out.row_pose_crops(row).numpy(),
        out.image_size,
        name=f"sample {record.key!r}",
        out_is_blank=True,
    )
    out.ipi_keypoints[row] = torch.from_numpy(sample.ipi_keypoints)  # (f + 1, 2, 18)
    driving_clip = out.driving_clip[row].numpy()  # (f + 1, d), row 0 the reference frame
    driving_clip[0], driving_clip[1:] = record.clip_embeds[sample.ref_index], record.clip_embeds[sample.frames]
    out.ref_clip[row] = out.driving_clip[row, 0]
    _decode_reference(record, sample.ref_slot, out.ref_image[row].numpy())
    out.keys[row], out.valid[row], out.epi_applied[row] = record.key, True, sample.epi_applied


def _copy_posterior(
    record: ClipRecord, ref_index: int, frames: slice, mean_out: np.ndarray, std_out: np.ndarray
) -> None:
    """Copy the posterior of the reference frame and the window into ``(4, f + 1, h, w)`` rows, and check it.

    Only the used frames are read (and checked for NaN/inf), straight from the shard bytes into the batch in
    its (channel, frame) layout. The draw ``mean + std * N(0, 1)`` happens on the device
    (``Batch.sample_posterior``).
    """
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
