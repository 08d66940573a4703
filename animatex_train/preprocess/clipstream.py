"""Decode a video once and hand out its clips in order, with keypoints, holding only the frames still needed.

Frames are decoded in index order; each wanted frame is resized and cropped for storage and, when an
estimator is used, passed at source resolution to the pose estimator in batches (the official pipeline
runs DWPose on the source frames). A clip is yielded as soon as its last frame is decoded, and frames no
later clip uses are dropped, so memory stays around one or two clips whatever the video's length.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from animatex_train.preprocess.pose.base import PoseEstimator
from animatex_train.preprocess.sampling import CropGeometry
from animatex_train.preprocess.video import VideoInfo, decode_frames


def iter_clips(
    path: Path,
    info: VideoInfo,
    clips: list[np.ndarray],
    geometry: CropGeometry | None,
    estimator: PoseEstimator | None,
    pose_batch_size: int,
) -> Iterator[tuple[int, np.ndarray | None, np.ndarray | None]]:
    """Yield ``(clip position, frames, source keypoints)`` for every clip, in order.

    Args:
        path: the video.
        info: its probe.
        clips: per clip, the ``(t,)`` non-decreasing source frame indices; clips in start order.
        geometry: resize + crop of the stored frames; None when frames are not needed (the pose stage).
        estimator: runs on the source-resolution frames; None when keypoints come from a file.
        pose_batch_size: frames per estimator call (a call is also made when a clip completes).

    Yields:
        The clip's position in ``clips``, its ``(t, H, W, 3)`` uint8 stored frames (or None without
        ``geometry``) and its ``(t, 130, 2)`` keypoints normalised to the source frame (or None without
        ``estimator``).

    Raises:
        VideoRejected: from decoding.
    """
    needed = np.unique(np.concatenate(clips))
    last_use: dict[int, int] = {}
    for position, indices in enumerate(clips):
        for index in indices.tolist():
            last_use[index] = position
    frames: dict[int, np.ndarray] = {}
    poses: dict[int, np.ndarray] = {}
    pending: list[tuple[int, np.ndarray]] = []
    position = 0

    def flush() -> None:
        if pending:
            estimated = estimator.estimate(np.stack([frame for _, frame in pending])).to_array()
            for (index, _), row in zip(pending, estimated, strict=True):
                poses[index] = row
            pending.clear()

    for index, source_frame in decode_frames(path, info, needed):
        if geometry is not None:
            frames[index] = geometry.apply(source_frame)
        if estimator is not None:
            pending.append((index, source_frame))
            if len(pending) >= pose_batch_size:
                flush()
        while position < len(clips) and int(clips[position][-1]) <= index:
            flush()
            indices = clips[position].tolist()
            yield (
                position,
                np.stack([frames[i] for i in indices]) if geometry is not None else None,
                np.stack([poses[i] for i in indices]) if estimator is not None else None,
            )
            for i in [i for i in frames.keys() | poses.keys() if last_use[i] <= position]:
                frames.pop(i, None)
                poses.pop(i, None)
            position += 1
