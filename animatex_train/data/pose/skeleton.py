"""The pose skeleton: the tree of the 19 drawn limbs over the 20 body-and-feet joints, and pose validation.

OpenPose-18 body joints plus the two toes, rooted at the neck; every bone is named by its child joint, hands hang
from their wrists and the face from the nose. Drawing (``pose.render``) and the explicit pose indicator
(``epi.realign``, ``epi.rescale``) share these tables.
"""

from __future__ import annotations

import numpy as np

from animatex_train.data.format.keypoints import (
    BODY,
    NUM_BODY,
    NUM_FACE,
    NUM_FEET,
    NUM_HAND_POINTS,
    NUM_HANDS,
    KeypointError,
    PoseSequence,
    validate_coordinates,
)

NUM_JOINTS = NUM_BODY + NUM_FEET
ROOT = BODY["neck"]
LEFT_TOES, RIGHT_TOES = NUM_BODY, NUM_BODY + 1
# Parent of every body-and-feet joint (-1 for the root); bone ``c`` is the limb parent(c) -> c.
JOINT_PARENT: tuple[int, ...] = (
    BODY["neck"],
    -1,
    BODY["neck"],
    BODY["right_shoulder"],
    BODY["right_elbow"],
    BODY["neck"],
    BODY["left_shoulder"],
    BODY["left_elbow"],
    BODY["neck"],
    BODY["right_hip"],
    BODY["right_knee"],
    BODY["neck"],
    BODY["left_hip"],
    BODY["left_knee"],
    BODY["nose"],
    BODY["nose"],
    BODY["right_eye"],
    BODY["left_eye"],
    BODY["left_ankle"],
    BODY["right_ankle"],
)
BONES: tuple[int, ...] = tuple(j for j in range(NUM_JOINTS) if JOINT_PARENT[j] >= 0)
HEAD_BONES: tuple[int, ...] = (BODY["right_eye"], BODY["left_eye"], BODY["right_ear"], BODY["left_ear"])
# Hand h of ``PoseSequence.hands`` (0 = left, 1 = right) hangs from this wrist.
HAND_WRIST: tuple[int, int] = (BODY["left_wrist"], BODY["right_wrist"])
FACE_ROOT = BODY["nose"]


def _ancestors(joint: int) -> tuple[int, ...]:
    chain = []
    while JOINT_PARENT[joint] >= 0:
        joint = JOINT_PARENT[joint]
        chain.append(joint)
    return tuple(chain)


ANCESTORS: tuple[tuple[int, ...], ...] = tuple(_ancestors(j) for j in range(NUM_JOINTS))
# Parents before children, so a rebuilt parent is always available.
TOPOLOGICAL_ORDER: tuple[int, ...] = tuple(sorted(range(NUM_JOINTS), key=lambda j: len(ANCESTORS[j])))


def validate_pose(pose: PoseSequence, name: str) -> None:
    """Raise ``KeypointError`` naming ``name`` if ``pose`` has wrong shapes, NaNs or coordinates outside [0, 1]."""
    if not isinstance(pose, PoseSequence):
        raise KeypointError(f"{name}: expected a PoseSequence, got {type(pose).__name__}")
    t = pose.body.shape[0] if np.ndim(pose.body) == 3 else -1
    expected = {"body": (t, NUM_BODY, 2), "feet": (t, NUM_FEET, 2), "hands": (t, NUM_HANDS, NUM_HAND_POINTS, 2)}
    if pose.face is not None:
        expected["face"] = (t, NUM_FACE, 2)
    for part, shape in expected.items():
        array = getattr(pose, part)
        if t < 1 or not isinstance(array, np.ndarray) or array.shape != shape:
            got = tuple(np.shape(array))
            raise KeypointError(f"{name}: {part} keypoints must have shape {shape} with at least one frame, got {got}")
        validate_coordinates(array, f"{name} {part}")
    height, width = pose.frame_size
    if height < 1 or width < 1:
        raise KeypointError(f"{name}: frame_size must be a positive (height, width), got {pose.frame_size}")
