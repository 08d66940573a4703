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

The training loader draws palette labels instead of colours (``render_pose_labels``, one byte per pixel, see
``LABEL_COLOURS``): ``POSE_PALETTE[labels]`` is the RGB image exactly, and the device does that lookup.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import cv2
import numpy as np

from animatex_train.data.keypoints import BODY, NUM_BODY, PoseSequence
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
    return _render(pose, size, out, name, RGB_COLOURS, channels=3, blank=False)


def render_pose_labels(
    pose: PoseSequence,
    size: tuple[int, int] | None = None,
    out: np.ndarray | None = None,
    name: str = "pose",
    out_is_blank: bool = False,
) -> np.ndarray:
    """``render_pose`` as palette labels: ``POSE_PALETTE[render_pose_labels(...)] == render_pose(...)``.

    Args:
        pose, size, name: as for ``render_pose``.
        out: optional ``(t, height, width)`` uint8 buffer to draw into; cleared first unless ``out_is_blank``.
        out_is_blank: the caller guarantees ``out`` is all zeros (a fresh zeroed or shared-memory buffer), so
            clearing it, a pass over every byte, can be skipped.

    Returns:
        ``(t, height, width)`` uint8 labels (0 = background).
    """
    return _render(pose, size, out, name, LABEL_COLOURS, channels=1, blank=out_is_blank)


def _render(pose: PoseSequence, size: tuple[int, int] | None, out: np.ndarray | None, name: str,
            colours: DrawColours, channels: int, blank: bool) -> np.ndarray:  # fmt: skip
    validate_pose(pose, name)
    height, width = pose.frame_size if size is None else (int(size[0]), int(size[1]))
    if height < 1 or width < 1:
        raise ValueError(f"{name}: image size must be positive, got (height, width) = ({height}, {width})")
    shape = (pose.num_frames, height, width) + ((channels,) if channels > 1 else ())
    if out is None:
        out = np.zeros(shape, dtype=np.uint8)
    else:
        if out.shape != shape or out.dtype != np.uint8:
            raise ValueError(f"{name}: output buffer must be uint8 of shape {shape}, got {out.dtype} {out.shape}")
        if not blank:
            out[...] = 0
    _draw(pose, out, height, width, colours)
    return out


def _draw(pose: PoseSequence, out: np.ndarray, height: int, width: int, colours: DrawColours) -> None:
    """Paint every frame of ``out`` in the official order: limbs, joint dots, then per hand its bones and dots.

    Each frame is a separate canvas, so drawing one layer for all frames before the next layer gives every frame
    exactly the per-frame order; it lets each layer of same-sized dots be stamped for all frames at once.
    """
    joints = np.concatenate([pose.body, pose.feet], axis=1)  # (t, 20, 2), the official body-and-feet order
    for frame, limb, centre, axes, angle in _limbs(joints, height, width):
        cv2.fillConvexPoly(out[frame], cv2.ellipse2Poly(centre, axes, angle, 0, 360, 1), colours.limbs[limb])
    joint_present = ~np.all(joints == -1.0, axis=-1)  # (t, 20); body points have no eps test
    joint_xs = (joints[..., 0] * np.float32(width)).astype(np.int64)
    joint_ys = (joints[..., 1] * np.float32(height)).astype(np.int64)
    for joint in range(joints.shape[1]):  # joint order decides overlaps
        frames = np.flatnonzero(joint_present[:, joint])
        _stamp_dots(out, frames, joint_xs[frames, joint], joint_ys[frames, joint], colours.joints[joint])
    hand_xs = (pose.hands[..., 0] * np.float32(width)).astype(np.int64)  # (t, 2, 21)
    hand_ys = (pose.hands[..., 1] * np.float32(height)).astype(np.int64)
    # The official hand test is on the truncated pixel coordinates; missing points (-1) become negative there.
    hand_shown = (hand_xs > HAND_EPS) & (hand_ys > HAND_EPS)
    for hand in range(2):
        xs, ys, shown = hand_xs[:, hand], hand_ys[:, hand], hand_shown[:, hand]
        frames, edges = np.nonzero(shown[:, _EDGE_FROM] & shown[:, _EDGE_TO])  # frame-major, edges in order
        a, b = _EDGE_FROM[edges], _EDGE_TO[edges]
        for frame, edge, x0, y0, x1, y1 in zip(frames.tolist(), edges.tolist(), xs[frames, a].tolist(),
                                               ys[frames, a].tolist(), xs[frames, b].tolist(),
                                               ys[frames, b].tolist(), strict=True):  # fmt: skip
            cv2.line(out[frame], (x0, y0), (x1, y1), colours.hand_bones[edge], thickness=HAND_LINE_THICKNESS_PX)
        frames, points = np.nonzero(shown)
        _stamp_dots(out, frames, xs[frames, points], ys[frames, points], colours.hand_dot)


def _disc_offsets(radius: int) -> tuple[np.ndarray, np.ndarray]:
    """``(dy, dx)`` of the pixels ``cv2.circle(thickness=-1)`` fills around an integer centre, read from OpenCV.

    Its filled circle is an integer span rasteriser clipped to the image, so the covered pixels are the same set
    of offsets wherever the centre lies; stamping them reproduces the call without one call per dot.
    """
    size = 4 * radius + 1
    canvas = np.zeros((size, size), dtype=np.uint8)
    cv2.circle(canvas, (2 * radius, 2 * radius), radius, 1, thickness=-1)
    dy, dx = np.nonzero(canvas)
    return dy - 2 * radius, dx - 2 * radius


_DOT_DY, _DOT_DX = _disc_offsets(JOINT_RADIUS_PX)
_DOT_REACH = int(max(np.abs(_DOT_DY).max(), np.abs(_DOT_DX).max()))
assert JOINT_RADIUS_PX == HAND_DOT_RADIUS_PX  # one disc serves both layers
_EDGE_FROM = np.array([a for a, _ in HAND_EDGES])
_EDGE_TO = np.array([b for _, b in HAND_EDGES])


def _stamp_dots(out: np.ndarray, frames: np.ndarray, xs: np.ndarray, ys: np.ndarray, colour: object) -> None:
    """Filled radius-4 dots of one colour at ``(xs, ys)`` on ``out[frames]``; overlaps within a layer are equal."""
    if frames.size == 0:
        return
    height, width = out.shape[1], out.shape[2]
    py, px = ys[:, None] + _DOT_DY, xs[:, None] + _DOT_DX
    pixels = (frames[:, None] * height + py) * width + px  # flat pixel index (out is C-contiguous)
    reach = _DOT_REACH
    if ys.min() < reach or xs.min() < reach or ys.max() >= height - reach or xs.max() >= width - reach:
        pixels = pixels[(py >= 0) & (py < height) & (px >= 0) & (px < width)]  # clipped like OpenCV's drawing
    out.reshape((-1,) + out.shape[3:])[pixels.ravel()] = colour


_LIMB_FIRST = np.array([a for a, _ in LIMBS])
_LIMB_SECOND = np.array([b for _, b in LIMBS])


def _limbs(joints: np.ndarray, height: int, width: int) -> zip:
    """``(frame, limb, centre, axes, angle)`` of every drawn limb, frame-major and in limb order.

    ``joints`` is ``(t, 20, 2)`` normalised. Same arithmetic as the official code on float32 keypoints: float32
    pixel coordinates, their float32 mean and length, truncation to int, and the angle from ``math.atan2`` in
    degrees truncated to int (Python's libm call, not numpy's, whose SIMD arctan2 may differ in the last bit).
    """
    present = ~np.all(joints == -1.0, axis=-1)
    frames, limbs = np.nonzero(present[:, _LIMB_FIRST] & present[:, _LIMB_SECOND])
    first, second = _LIMB_FIRST[limbs], _LIMB_SECOND[limbs]
    px = joints[..., 0] * np.float32(width)
    py = joints[..., 1] * np.float32(height)
    x0, x1, y0, y1 = px[frames, first], px[frames, second], py[frames, first], py[frames, second]
    centres = zip(((x0 + x1) / np.float32(2)).astype(np.int64).tolist(),
                  ((y0 + y1) / np.float32(2)).astype(np.int64).tolist(), strict=True)  # fmt: skip
    dx, dy = x0 - x1, y0 - y1
    half_lengths = (np.sqrt(dy * dy + dx * dx) / np.float32(2)).astype(np.int64).tolist()
    axes = ((length, LIMB_HALF_WIDTH_PX) for length in half_lengths)
    angles = (int(math.degrees(math.atan2(y, x))) for y, x in zip(dy.tolist(), dx.tolist(), strict=True))
    return zip(frames.tolist(), limbs.tolist(), centres, axes, angles, strict=True)


__all__ = [
    "CANVAS_COLOURS", "HAND_BONE_DRAW_COLOURS", "HAND_DOT_DRAW_COLOUR", "HAND_EDGES", "JOINT_DRAW_COLOURS",
    "LABEL_COLOURS", "LIMBS", "LIMB_DRAW_COLOURS", "POSE_PALETTE", "render_pose", "render_pose_labels",
]  # fmt: skip
