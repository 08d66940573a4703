"""The official pose-drawing style: stroke sizes, the limb list, colour tables and the palette of label images.

Read from Animate-X's ``dwpose/util.py`` (docs/official_release.md §7); ``pose.render`` draws with these. Colours
are given as on the official canvas, which is saved as BGR and read back as RGB, so the drawing colours are reversed
once here.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import cv2
import numpy as np

from animatex_train.data.format.keypoints import BODY, NUM_BODY

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
    (255, 0, 0),
    (255, 85, 0),
    (255, 170, 0),
    (255, 255, 0),
    (170, 255, 0),
    (85, 255, 0),
    (0, 255, 0),
    (0, 255, 85),
    (0, 255, 170),
    (0, 255, 255),
    (0, 170, 255),
    (0, 85, 255),
    (0, 0, 255),
    (85, 0, 255),
    (170, 0, 255),
    (255, 0, 255),
    (255, 0, 170),
    (255, 0, 85),
    (170, 255, 255),
    (255, 255, 0),
)
CANVAS_HAND_DOT_COLOUR = (0, 0, 255)

# Hand bones: wrist -> each finger's 4 points, thumb first.
HAND_EDGES: tuple[tuple[int, int], ...] = tuple(
    edge
    for finger in range(5)
    for edge in (
        (0, 4 * finger + 1),
        (4 * finger + 1, 4 * finger + 2),
        (4 * finger + 2, 4 * finger + 3),
        (4 * finger + 3, 4 * finger + 4),
    )
)


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


@dataclass(frozen=True)
class DrawColours:
    """The value each drawn element is painted with: RGB triples, or single-channel palette labels."""

    limbs: tuple
    joints: tuple
    hand_bones: tuple
    hand_dot: object


RGB_COLOURS = DrawColours(LIMB_DRAW_COLOURS, JOINT_DRAW_COLOURS, HAND_BONE_DRAW_COLOURS, HAND_DOT_DRAW_COLOUR)
# Label images: every element is drawn with a distinct index into ``POSE_PALETTE`` instead of its colour. The
# drawing is solid and non-antialiased, so which pixels a primitive covers does not depend on the value it paints;
# a label image looked up in the palette is therefore the RGB image pixel for pixel, at a third of the bytes and
# without an HWC -> CHW transpose (the loader ships labels; the device expands them, ``batch.Batch.pose_images``).
_LIMB_LABEL0 = 1
_JOINT_LABEL0 = _LIMB_LABEL0 + len(LIMBS)
_HAND_BONE_LABEL0 = _JOINT_LABEL0 + len(CANVAS_COLOURS)
HAND_DOT_LABEL = _HAND_BONE_LABEL0 + len(HAND_EDGES)
LABEL_COLOURS = DrawColours(
    limbs=tuple(range(_LIMB_LABEL0, _JOINT_LABEL0)),
    joints=tuple(range(_JOINT_LABEL0, _HAND_BONE_LABEL0)),
    hand_bones=tuple(range(_HAND_BONE_LABEL0, HAND_DOT_LABEL)),
    hand_dot=HAND_DOT_LABEL,
)


def _painted(colour: tuple[float, ...]) -> tuple[int, int, int]:
    """The uint8 pixel OpenCV writes for ``colour`` (it rounds float colours), read back from a 1-pixel drawing."""
    pixel = np.zeros((1, 1, 3), dtype=np.uint8)
    cv2.rectangle(pixel, (0, 0), (0, 0), colour, thickness=-1)
    return tuple(int(c) for c in pixel[0, 0])


def _palette() -> np.ndarray:
    palette = np.zeros((256, 3), dtype=np.uint8)  # label 0 (and every unused label) is black
    for labels, colours in (
        (LABEL_COLOURS.limbs, RGB_COLOURS.limbs),
        (LABEL_COLOURS.joints, RGB_COLOURS.joints),
        (LABEL_COLOURS.hand_bones, RGB_COLOURS.hand_bones),
        ((LABEL_COLOURS.hand_dot,), (RGB_COLOURS.hand_dot,)),
    ):
        for label, colour in zip(labels, colours, strict=True):
            palette[label] = _painted(colour)
    palette.setflags(write=False)
    return palette


POSE_PALETTE = _palette()  # (256, 3) uint8 RGB of every label
