"""Synthetic people for pose-geometry tests: a skeleton built bone by bone, with chosen bone lengths and motion."""

from __future__ import annotations

import numpy as np

from animatex_train.data.format.keypoints import BODY, PoseSequence
from animatex_train.data.pose.skeleton import JOINT_PARENT, NUM_JOINTS, TOPOLOGICAL_ORDER

# Bone vectors (parent -> joint) in pixels of a 768-high frame for a standing person; the neck is the root.
_BASE = {
    "nose": (0, -50),
    "right_shoulder": (-55, 5),
    "right_elbow": (-15, 85),
    "right_wrist": (-5, 80),
    "left_shoulder": (55, 5),
    "left_elbow": (15, 85),
    "left_wrist": (5, 80),
    "right_hip": (-30, 190),
    "right_knee": (-5, 120),
    "right_ankle": (0, 115),
    "left_hip": (30, 190),
    "left_knee": (5, 120),
    "left_ankle": (0, 115),
    "right_eye": (-12, -12),
    "left_eye": (12, -12),
    "right_ear": (-14, 6),
    "left_ear": (14, 6),
}
BASE_BONES = np.zeros((NUM_JOINTS, 2))
for _name, _vector in _BASE.items():
    BASE_BONES[BODY[_name]] = _vector
BASE_BONES[18] = (10, 20)  # left toes, from the left ankle
BASE_BONES[19] = (-10, 20)  # right toes, from the right ankle
# Hand points about the hand's wrist point (0): five fingers of four points; face points on a ring below the nose.
HAND_OFFSETS = np.array([(0.0, 0.0)] + [(-8.0 + 4 * k, 6.0 * m) for k in range(5) for m in range(1, 5)])
FACE_OFFSETS = np.stack(
    [18 * np.cos(np.linspace(0, 2 * np.pi, 68, endpoint=False)), 8 + 14 * np.sin(np.linspace(0, 2 * np.pi, 68))], -1
)


def person(
    num_frames: int = 1,
    size: tuple[int, int] = (768, 512),
    neck: tuple[float, float] = (256.0, 200.0),
    lengths: dict[str, float] | None = None,
    scale: float = 1.0,
    wiggle: float = 0.0,
    travel: tuple[float, float] = (0.0, 0.0),
    seed: int = 0,
) -> PoseSequence:
    """A person in a ``size = (height, width)`` frame.

    Args:
        num_frames: frames; frame ``f`` turns every bone by ``wiggle * sin(...)`` radians and moves the neck by
            ``f * travel`` pixels.
        lengths: per-joint factors on the bone ending at that joint (body names; "left_toes"/"right_toes" too).
        scale: factor on every length (also hands and face).
        seed: phase of the wiggle.
    """
    factors = np.ones(NUM_JOINTS)
    for name, factor in (lengths or {}).items():
        factors[{"left_toes": 18, "right_toes": 19}.get(name, BODY.get(name, -1))] = factor
    phase = np.random.default_rng(seed).uniform(0, 2 * np.pi, NUM_JOINTS)
    joints = np.zeros((num_frames, NUM_JOINTS, 2))
    for f in range(num_frames):
        joints[f, 1] = np.add(neck, np.multiply(travel, f))
        for joint in TOPOLOGICAL_ORDER[1:]:
            angle = wiggle * np.sin(0.9 * f + phase[joint]) if f else 0.0
            rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
            joints[f, joint] = joints[f, JOINT_PARENT[joint]] + rotation @ (BASE_BONES[joint] * factors[joint] * scale)
    hands = np.stack([joints[:, BODY["left_wrist"]], joints[:, BODY["right_wrist"]]], axis=1)[:, :, None]
    hands = hands + HAND_OFFSETS * scale  # (t, 2, 21, 2)
    face = joints[:, BODY["nose"], None] + FACE_OFFSETS * scale
    unit = np.array([size[1], size[0]], dtype=np.float64)
    return PoseSequence(
        body=(joints[:, :18] / unit).astype(np.float32),
        feet=(joints[:, 18:] / unit).astype(np.float32),
        hands=(hands / unit).astype(np.float32),
        face=(face / unit).astype(np.float32),
        frame_size=size,
    )


def with_points(pose: PoseSequence, part: str, index: tuple, value: tuple[float, float]) -> PoseSequence:
    """A copy of ``pose`` with ``getattr(pose, part)[index] = value`` (e.g. (-1, -1) to hide a point)."""
    arrays = {name: getattr(pose, name).copy() for name in ("body", "feet", "hands", "face")}
    arrays[part][index] = value
    return PoseSequence(**arrays, frame_size=pose.frame_size)
