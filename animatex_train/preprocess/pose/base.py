"""The two ways keypoints enter data preparation: estimators (from pixels) and importers (from files).

* A ``PoseEstimator`` looks at decoded frames: DWPose on onnxruntime, mediapipe, or your own class.
* A ``PoseImporter`` reads keypoints already computed for the whole video: the official Animate-X
  ``.pkl``, or a ``<stem>.pose.npy`` sidecar in the packed format of ``data/format/keypoints.py``.

Both give keypoints normalised to the *source* frame; ``sampling.CropGeometry.transform_points`` maps
them onto the stored (resized and cropped) frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from animatex_train.data.format.keypoints import MISSING, NUM_POINTS, POINT_SLICES, PoseSequence, visible
from animatex_train.preprocess.inputs import VideoSource
from animatex_train.preprocess.video import VideoInfo


@runtime_checkable
class PoseEstimator(Protocol):
    """Estimates one person's keypoints on every frame of a batch.

    Attributes:
        name: recorded as ``meta.pose_source`` (e.g. ``"dwpose"``).
    """

    name: str

    def estimate(self, frames: np.ndarray) -> PoseSequence:
        """Keypoints of one person per frame.

        Args:
            frames: ``(n, h, w, 3)`` uint8 RGB, all of one size.

        Returns:
            A ``PoseSequence`` of ``n`` frames normalised by ``w`` and ``h``, ``frame_size == (h, w)``;
            points below the estimator's confidence threshold or outside the frame are ``(-1, -1)``.
        """
        ...


@dataclass(frozen=True)
class SourcePoses:
    """Keypoints of a whole video, read from a file.

    Attributes:
        points: ``(num_source_frames, 130, 2)`` float32, normalised to the source frame.
        available: ``(num_source_frames,)`` bool, which frames the file actually covers (a pose-stage
            sidecar holds only the frames its clips needed).
        pose_source: what produced them (for ``meta.pose_source``).
    """

    points: np.ndarray
    available: np.ndarray
    pose_source: str


@runtime_checkable
class PoseImporter(Protocol):
    """Reads precomputed keypoints of a whole video.

    Attributes:
        name: a short name for logs and the manifest (``"pkl"``, ``"sidecar"``).
    """

    name: str

    def load(self, video: VideoSource, info: VideoInfo) -> SourcePoses:
        """The keypoints of every source frame of ``video``.

        Raises:
            VideoRejected: (reason ``pose_unavailable``) no file, or one that does not match the video.
        """
        ...


def pack_parts(
    body: np.ndarray, feet: np.ndarray | None, hands: np.ndarray | None, face: np.ndarray | None
) -> np.ndarray:
    """Assemble the packed ``(t, 130, 2)`` array from parts; absent parts are missing.

    Args:
        body: ``(t, 18, 2)``.
        feet: ``(t, 2, 2)`` or None.
        hands: ``(t, 2, 21, 2)`` (left, right) or None.
        face: ``(t, 68, 2)`` or None.
    """
    packed = np.full((body.shape[0], NUM_POINTS, 2), MISSING, dtype=np.float32)
    packed[:, POINT_SLICES["body"]] = body
    if feet is not None:
        packed[:, POINT_SLICES["feet"]] = feet
    if hands is not None:
        packed[:, POINT_SLICES["left_hand"]] = hands[:, 0]
        packed[:, POINT_SLICES["right_hand"]] = hands[:, 1]
    if face is not None:
        packed[:, POINT_SLICES["face"]] = face
    return packed


def drop_outside_frame(points: np.ndarray) -> np.ndarray:
    """Mark points outside ``[0, 1]`` (or non-finite) as missing; estimators may place points beyond the frame."""
    points = np.asarray(points, dtype=np.float32).copy()
    bad = ~np.all(np.isfinite(points), axis=-1) | np.any((points < 0.0) | (points > 1.0), axis=-1)
    points[bad] = MISSING  # (-1, -1) itself counts as outside and stays (-1, -1)
    return points


def person_frames(body: np.ndarray, min_body_points: int) -> np.ndarray:
    """``(t,)`` bool: frames with at least ``min_body_points`` visible body points (``body``: ``(t, 18, 2)``)."""
    return visible(body).sum(axis=-1) >= min_body_points
