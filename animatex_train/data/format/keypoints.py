"""The keypoint format: the one place where the layout of a person's pose keypoints is spelled.

A pose is what DWPose's official post-processing produces (docs/official_release.md §7): the OpenPose-18 body,
two foot points (the midpoint of each foot's big and small toe), two 21-point hands and an
optional 68-point face. Coordinates are normalised, ``x / width`` and ``y / height`` of the source
frame, so they lie in [0, 1]; a missing point is ``(-1, -1)`` in both coordinates (DWPose's score
below 0.3, or a part that was never detected). The frame size travels with the keypoints so that
aspect-dependent geometry (bone lengths, angles) can be computed in pixels.

Stored as one float32 array of shape ``(t, 130, 2)`` (``POINT_SLICES`` below), never pickled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# OpenPose-18 body order, as DWPose's post-processing permutes COCO-17 + an inserted neck.
BODY_NAMES: tuple[str, ...] = (
    "nose",
    "neck",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "right_hip",
    "right_knee",
    "right_ankle",
    "left_hip",
    "left_knee",
    "left_ankle",
    "right_eye",
    "left_eye",
    "right_ear",
    "left_ear",
)
BODY = {name: i for i, name in enumerate(BODY_NAMES)}
NUM_BODY = 18
# Foot points, in DWPose's order: 0 = left toes (drawn from the left ankle), 1 = right toes.
FOOT_NAMES: tuple[str, ...] = ("left_toes", "right_toes")
NUM_FEET = 2
# Hands, in DWPose's order: 0 = left hand, 1 = right hand; 21 points each (wrist, then 4 per finger).
NUM_HANDS = 2
NUM_HAND_POINTS = 21
NUM_FACE = 68

# Rows of the packed (t, 130, 2) array.
POINT_SLICES: dict[str, slice] = {
    "body": slice(0, 18),
    "feet": slice(18, 20),
    "left_hand": slice(20, 41),
    "right_hand": slice(41, 62),
    "face": slice(62, 130),
}
NUM_POINTS = 130
MISSING = -1.0


class KeypointError(ValueError):
    """Keypoints that do not follow the format; the message names the sample."""


@dataclass(frozen=True)
class PoseSequence:
    """The keypoints of one person over ``t`` frames.

    Attributes:
        body: ``(t, 18, 2)`` float32, OpenPose-18 order (``BODY_NAMES``).
        feet: ``(t, 2, 2)`` float32, ``FOOT_NAMES`` order.
        hands: ``(t, 2, 21, 2)`` float32, left hand then right hand.
        face: ``(t, 68, 2)`` float32, or None when the face was not kept.
        frame_size: ``(height, width)`` in pixels of the frames the keypoints were measured on.
    """

    body: np.ndarray
    feet: np.ndarray
    hands: np.ndarray
    face: np.ndarray | None
    frame_size: tuple[int, int]

    @property
    def num_frames(self) -> int:
        return int(self.body.shape[0])

    @property
    def body_visible(self) -> np.ndarray:
        """``(t, 18)`` bool: which body points are present."""
        return visible(self.body)

    @classmethod
    def empty(cls, num_frames: int, frame_size: tuple[int, int], with_face: bool = False) -> PoseSequence:
        """All points missing."""
        full = np.full((num_frames, NUM_POINTS, 2), MISSING, dtype=np.float32)
        return cls.from_array(full if with_face else full[:, :62], frame_size)

    def to_array(self) -> np.ndarray:
        """Pack into the stored ``(t, 130, 2)`` float32 layout (face rows missing if absent)."""
        packed = np.full((self.num_frames, NUM_POINTS, 2), MISSING, dtype=np.float32)
        packed[:, POINT_SLICES["body"]] = self.body
        packed[:, POINT_SLICES["feet"]] = self.feet
        packed[:, POINT_SLICES["left_hand"]] = self.hands[:, 0]
        packed[:, POINT_SLICES["right_hand"]] = self.hands[:, 1]
        if self.face is not None:
            packed[:, POINT_SLICES["face"]] = self.face
        return packed

    @classmethod
    def from_array(cls, packed: np.ndarray, frame_size: tuple[int, int], name: str = "keypoints") -> PoseSequence:
        """Unpack ``(t, 130, 2)`` (or ``(t, 62, 2)`` without a face); validates first."""
        packed = np.asarray(packed)
        if packed.ndim != 3 or packed.shape[1] not in (62, NUM_POINTS) or packed.shape[2] != 2:
            raise KeypointError(
                f"{name}: expected keypoints of shape (frames, {NUM_POINTS}, 2) (or (frames, 62, 2) without a "
                f"face), got {tuple(packed.shape)}"
            )
        packed = packed.astype(np.float32, copy=False)
        validate_coordinates(packed, name)
        face = None
        if packed.shape[1] == NUM_POINTS:
            face = packed[:, POINT_SLICES["face"]].copy()
            if not visible(face).any():
                face = None
        return cls(
            body=packed[:, POINT_SLICES["body"]].copy(),
            feet=packed[:, POINT_SLICES["feet"]].copy(),
            hands=np.stack([packed[:, POINT_SLICES["left_hand"]], packed[:, POINT_SLICES["right_hand"]]], axis=1),
            face=face,
            frame_size=(int(frame_size[0]), int(frame_size[1])),
        )

    def select(self, frame_indices: np.ndarray | list[int]) -> PoseSequence:
        """The poses at the given frame indices (a window, a reference frame)."""
        idx = np.asarray(frame_indices, dtype=np.int64)
        return PoseSequence(
            body=self.body[idx],
            feet=self.feet[idx],
            hands=self.hands[idx],
            face=None if self.face is None else self.face[idx],
            frame_size=self.frame_size,
        )

    def ipi_keypoints(self) -> np.ndarray:
        """``(t, 2, 18)`` float32: the implicit pose indicator's input (x row, then y row)."""
        return np.ascontiguousarray(self.body.transpose(0, 2, 1))


def concat_poses(*poses: PoseSequence) -> PoseSequence:
    """The frames of ``poses`` one after another (same frame size; the face is kept only if all have one)."""
    sizes = {pose.frame_size for pose in poses}
    if len(sizes) != 1:
        raise KeypointError(f"cannot join pose sequences measured on different frame sizes: {sorted(sizes)}")
    faces = [pose.face for pose in poses]
    return PoseSequence(
        body=np.concatenate([pose.body for pose in poses]),
        feet=np.concatenate([pose.feet for pose in poses]),
        hands=np.concatenate([pose.hands for pose in poses]),
        face=None if any(face is None for face in faces) else np.concatenate(faces),
        frame_size=poses[0].frame_size,
    )


def visible(points: np.ndarray) -> np.ndarray:
    """``(...)`` bool of which points in ``(..., 2)`` are present (not ``(-1, -1)``)."""
    # Two column tests instead of np.all(axis=-1): same result, several times faster on the small pose arrays
    # the loader checks many times per sample.
    return (points[..., 0] != MISSING) | (points[..., 1] != MISSING)


def validate_coordinates(points: np.ndarray, name: str) -> None:
    """Raise ``KeypointError`` naming ``name`` on NaN/inf, half-missing points or out-of-range values."""
    # Fast path (the loader validates every pose several times per sample): every coordinate in [0, 1] or a
    # (-1, -1) pair passes; NaN fails both tests. Anything else goes through the checks below for the message.
    missing = points == MISSING
    if (((points >= 0.0) & (points <= 1.0)) | missing).all() and not (missing[..., 0] != missing[..., 1]).any():
        return
    if not np.isfinite(points).all():
        bad = np.argwhere(~np.isfinite(points))[0]
        raise KeypointError(f"{name}: non-finite keypoint coordinate at index {tuple(int(i) for i in bad)}")
    present = visible(points)
    half_missing = np.any(points == MISSING, axis=-1) & present
    if half_missing.any():
        bad = np.argwhere(half_missing)[0]
        raise KeypointError(
            f"{name}: point {tuple(int(i) for i in bad)} has one coordinate -1 and the other not; a missing point "
            "must be (-1, -1)"
        )
    coords = points[present]
    if coords.size and (coords.min() < 0.0 or coords.max() > 1.0):
        bad = np.argwhere(present & np.any((points < 0.0) | (points > 1.0), axis=-1))[0]
        raise KeypointError(
            f"{name}: keypoint {tuple(int(i) for i in bad)} = {points[tuple(bad)].tolist()} is outside [0, 1]; "
            "coordinates are normalised by the frame width and height (mark points outside the frame as (-1, -1))"
        )
