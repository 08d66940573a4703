"""Keypoints -> pose images, drawn exactly as Animate-X's official preprocessing draws them (spec section 7).

The official routine (``dwpose/util.py``: ``draw_body_and_foot`` then ``draw_handpose``; the face is not drawn)
paints on a black canvas:

1. 19 limbs, the 17 OpenPose limbs plus ankle -> toes on each foot, as filled ellipses of half-width 4 px
   (``cv2.ellipse2Poly`` + ``cv2.fillConvexPoly``) in the OpenPose colour table;
2. the canvas times 0.6, truncated to uint8;
3. 20 joint dots of radius 4 in the same colour table;
4. per hand: 20 bones as 2-px lines in an HSV rainbow, then a dot of radius 4 on every hand point. A hand point
   counts as present only when its integer pixel coordinates are both above ``eps = 0.01``, i.e. at least 1.

Two choices differ from the official script, both deliberate:

* **Resolution.** The official script draws at the source-video resolution and the pose JPEG is resized to
  the conditioning resolution later. Keypoints are normalised, so we draw directly at the requested
  ``(height, width)`` (the conditioning resolution on the training path) with the official stroke sizes in
  pixels of that canvas. When the requested size equals ``pose.frame_size`` the result is pixel-identical to
  the official drawing (before its JPEG compression); at other sizes strokes are not rescaled.
* **Channel order.** The official canvas is written with ``cv2.imwrite`` (which reads it as BGR) and the JPEG is
  read back with PIL as RGB, so the model sees the canvas with its channels reversed (hand dots ``(0, 0, 255)``
  on the canvas are red in the model input). We return that RGB image: the colour tables below are the official
  canvas tables, and they are reversed once when the drawing colours are built.

Step 2 is not done on the canvas: the limbs are solid, non-antialiased fills on black, so every limb pixel
holds the colour of the last limb drawn over it, and dimming each limb colour before filling gives the same
pixels as dimming the canvas afterwards, without a float pass over the whole image.
"""

from __future__ import annotations

import colorsys
import math

import cv2
import numpy as np

from animatex_train.data.keypoints import BODY, NUM_BODY, NUM_HAND_POINTS, PoseSequence
from animatex_train.data.pose_realign import validate_pose

LIMB_HALF_WIDTH_PX = 4
JOINT_RADIUS_PX = 4
HAND_LINE_THICKNESS_PX = 2
HAND_DOT_RADIUS_PX = 4
LIMB_DIMMING = 0.6
# Official hand-point presence test, applied to integer pixel coordinates.
HAND_EPS = 0.01

_LEFT_TOES = NUM_BODY  # joint 18 of the 20-point body-and-feet list
_RIGHT_TOES = NUM_BODY + 1

# The official limb list, in drawing order (the order decides which colour wins where limbs overlap).
LIMBS: tuple[tuple[int, int], ...] = (
    (BODY["neck"], BODY["right_shoulder"]),
    (BODY["neck"], BODY["left_shoulder"]),
    (BODY["right_shoulder"], BODY["right_elbow"]),
    (BODY["right_elbow"], BODY["right_wrist"]),
    (BODY["left_shoulder"], BODY["left_elbow"]),
    (BODY["left_elbow"], BODY["left_wrist"]),
    (BODY["neck"], BODY["right_hip"]),
    (BODY["right_hip"], BODY["right_knee"]),
    (BODY["right_knee"], BODY["right_ankle"]),
    (BODY["neck"], BODY["left_hip"]),
    (BODY["left_hip"], BODY["left_knee"]),
    (BODY["left_knee"], BODY["left_ankle"]),
    (BODY["neck"], BODY["nose"]),
    (BODY["nose"], BODY["right_eye"]),
    (BODY["right_eye"], BODY["right_ear"]),
    (BODY["nose"], BODY["left_eye"]),
    (BODY["left_eye"], BODY["left_ear"]),
    (BODY["left_ankle"], _LEFT_TOES),
    (BODY["right_ankle"], _RIGHT_TOES),
)

# Official colour table on the (BGR-saved) canvas; limb i uses entry i, joint j uses entry j.
CANVAS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85), (170, 255, 255), (255, 255, 0),
)  # fmt: skip
CANVAS_HAND_DOT_COLOUR = (0, 0, 255)

# Hand bones: wrist -> each finger's 4 points, thumb first.
HAND_EDGES: tuple[tuple[int, int], ...] = tuple(
    edge for finger in range(5) for edge in (
        (0, 4 * finger + 1), (4 * finger + 1, 4 * finger + 2), (4 * finger + 2, 4 * finger + 3),
        (4 * finger + 3, 4 * finger + 4),
    )
)  # fmt: skip


def _reversed(colour: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(colour[::-1])


def _dimmed(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    # Same arithmetic as the official ``(canvas * 0.6).astype(np.uint8)``: float64 product, truncation.
    dimmed = (np.asarray(colour, dtype=np.uint8) * LIMB_DIMMING).astype(np.uint8)
    return tuple(int(c) for c in dimmed)


# Drawing colours in output (RGB) order.
LIMB_DRAW_COLOURS = tuple(_reversed(_dimmed(CANVAS_COLOURS[i])) for i in range(len(LIMBS)))
JOINT_DRAW_COLOURS = tuple(_reversed(c) for c in CANVAS_COLOURS)
# Official: ``matplotlib.colors.hsv_to_rgb([i / 20, 1, 1]) * 255`` (same formula as colorsys), passed to OpenCV as
# floats, which OpenCV rounds half to even when it writes uint8.
HAND_BONE_DRAW_COLOURS = tuple(
    _reversed(tuple(c * 255.0 for c in colorsys.hsv_to_rgb(i / float(len(HAND_EDGES)), 1.0, 1.0)))
    for i in range(len(HAND_EDGES))
)
HAND_DOT_DRAW_COLOUR = _reversed(CANVAS_HAND_DOT_COLOUR)


def render_pose(
    pose: PoseSequence,
    size: tuple[int, int] | None = None,
    out: np.ndarray | None = None,
    name: str = "pose",
) -> np.ndarray:
    """Draw every frame of ``pose`` as the official Animate-X pose image (body, feet and hands; no face).

    Args:
        pose: the keypoints, ``t`` frames.
        size: ``(height, width)`` of the images; defaults to ``pose.frame_size`` (pixel-identical to the official
            drawing then).
        out: optional ``(t, height, width, 3)`` uint8 buffer to draw into; it is cleared first.
        name: names the sample in error messages.

    Returns:
        ``(t, height, width, 3)`` uint8 RGB images.

    Raises:
        KeypointError: the keypoints have the wrong shape, NaNs or coordinates outside [0, 1].
    """
    validate_pose(pose, name)
    height, width = pose.frame_size if size is None else (int(size[0]), int(size[1]))
    if height < 1 or width < 1:
        raise ValueError(f"{name}: image size must be positive, got (height, width) = ({height}, {width})")
    shape = (pose.num_frames, height, width, 3)
    if out is None:
        out = np.zeros(shape, dtype=np.uint8)
    else:
        if out.shape != shape or out.dtype != np.uint8:
            raise ValueError(f"{name}: output buffer must be uint8 of shape {shape}, got {out.dtype} {out.shape}")
        out[...] = 0
    joints = np.concatenate([pose.body, pose.feet], axis=1)  # (t, 20, 2), the official body-and-feet order
    limbs = _limb_geometry(joints, height, width)
    joint_present = (~np.all(joints == -1.0, axis=-1)).tolist()
    joint_xs = (joints[..., 0] * np.float32(width)).astype(np.int64).tolist()
    joint_ys = (joints[..., 1] * np.float32(height)).astype(np.int64).tolist()
    hand_xs_arr = (pose.hands[..., 0] * np.float32(width)).astype(np.int64)
    hand_ys_arr = (pose.hands[..., 1] * np.float32(height)).astype(np.int64)
    # The official hand test is on the truncated pixel coordinates; missing points (-1) become negative there.
    hand_shown_arr = (hand_xs_arr > HAND_EPS) & (hand_ys_arr > HAND_EPS)
    hand_any = hand_shown_arr.any(axis=-1).tolist()
    hand_shown, hand_xs, hand_ys = hand_shown_arr.tolist(), hand_xs_arr.tolist(), hand_ys_arr.tolist()
    for frame in range(pose.num_frames):
        canvas = out[frame]
        for limb, centre, axes, angle in limbs[frame]:
            polygon = cv2.ellipse2Poly(centre, axes, angle, 0, 360, 1)
            cv2.fillConvexPoly(canvas, polygon, LIMB_DRAW_COLOURS[limb])
        xs, ys = joint_xs[frame], joint_ys[frame]
        for joint, present in enumerate(joint_present[frame]):
            if present:
                cv2.circle(canvas, (xs[joint], ys[joint]), JOINT_RADIUS_PX, JOINT_DRAW_COLOURS[joint], thickness=-1)
        for hand in range(2):
            if hand_any[frame][hand]:
                _draw_hand(canvas, hand_shown[frame][hand], hand_xs[frame][hand], hand_ys[frame][hand])
    return out


_LIMB_FIRST = np.array([a for a, _ in LIMBS])
_LIMB_SECOND = np.array([b for _, b in LIMBS])


def _limb_geometry(joints: np.ndarray, height: int, width: int) -> list[list[tuple]]:
    """Per frame, ``(limb, centre, axes, angle)`` of every drawn limb; ``joints`` is ``(t, 20, 2)`` normalised.

    Same arithmetic as the official code on float32 keypoints: float32 pixel coordinates, their float32 mean and
    length, truncation to int, and the angle from ``math.atan2`` in degrees truncated to int.
    """
    present = ~np.all(joints == -1.0, axis=-1)
    drawn = present[:, _LIMB_FIRST] & present[:, _LIMB_SECOND]  # (t, 19)
    px = joints[..., 0] * np.float32(width)
    py = joints[..., 1] * np.float32(height)
    centre_x = ((px[:, _LIMB_FIRST] + px[:, _LIMB_SECOND]) / np.float32(2)).astype(np.int64).tolist()
    centre_y = ((py[:, _LIMB_FIRST] + py[:, _LIMB_SECOND]) / np.float32(2)).astype(np.int64).tolist()
    dx = px[:, _LIMB_FIRST] - px[:, _LIMB_SECOND]
    dy = py[:, _LIMB_FIRST] - py[:, _LIMB_SECOND]
    half_length = (np.sqrt(dy * dy + dx * dx) / np.float32(2)).astype(np.int64).tolist()
    dx_list, dy_list = dx.tolist(), dy.tolist()
    geometry = []
    for frame, limbs in enumerate(drawn.tolist()):
        geometry.append([
            (
                limb,
                (centre_x[frame][limb], centre_y[frame][limb]),
                (half_length[frame][limb], LIMB_HALF_WIDTH_PX),
                int(math.degrees(math.atan2(dy_list[frame][limb], dx_list[frame][limb]))),
            )
            for limb in range(len(LIMBS)) if limbs[limb]
        ])  # fmt: skip
    return geometry


def _draw_hand(canvas: np.ndarray, shown: list[bool], xs: list[int], ys: list[int]) -> None:
    """Rainbow bones then red dots of one hand, from its 21 integer pixel coordinates."""
    for edge, (a, b) in enumerate(HAND_EDGES):
        if shown[a] and shown[b]:
            cv2.line(
                canvas, (xs[a], ys[a]), (xs[b], ys[b]), HAND_BONE_DRAW_COLOURS[edge], thickness=HAND_LINE_THICKNESS_PX
            )
    for point in range(NUM_HAND_POINTS):
        if shown[point]:
            cv2.circle(canvas, (xs[point], ys[point]), HAND_DOT_RADIUS_PX, HAND_DOT_DRAW_COLOUR, thickness=-1)


__all__ = [
    "CANVAS_COLOURS", "HAND_BONE_DRAW_COLOURS", "HAND_DOT_DRAW_COLOUR", "HAND_EDGES", "JOINT_DRAW_COLOURS",
    "LIMBS", "LIMB_DRAW_COLOURS", "render_pose",
]  # fmt: skip
