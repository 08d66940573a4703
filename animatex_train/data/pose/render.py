"""Keypoints -> pose images, drawn exactly as Animate-X's official ``dwpose/util.py`` draws them.

The drawing rules: ``docs/official_release.md`` §7.

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
``LABEL_COLOURS``): ``POSE_PALETTE[labels]`` is the RGB image exactly, and the device does that lookup. It draws
only each frame's box around the drawn pixels (``pose_label_boxes``, computed from the keypoints before drawing;
``render_pose_label_crops``): about 3% of a pose image's pixels are drawn and the boxes hold 35-50% of them, so
the batch that crosses to the training process shrinks by that much (``batch.Batch.pose_labels`` puts the crops
back on the device).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from animatex_train.data.format.keypoints import PoseSequence
from animatex_train.data.pose.skeleton import validate_pose
from animatex_train.data.pose.style import (
    HAND_DOT_RADIUS_PX,
    HAND_EDGES,
    HAND_EPS,
    HAND_LINE_THICKNESS_PX,
    JOINT_RADIUS_PX,
    LABEL_COLOURS,
    LIMB_HALF_WIDTH_PX,
    LIMBS,
    RGB_COLOURS,
    DrawColours,
)


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


def pose_label_boxes(pose: PoseSequence, size: tuple[int, int] | None = None, name: str = "pose") -> np.ndarray:
    """Per frame, the box of the image that holds every pixel ``render_pose`` draws.

    Computed from the keypoints with the drawing's own integer geometry, clipped to the image; nothing is drawn
    to find it. A limb is an ellipse of half-axes ``(half length, 4)`` turned by its integer angle, whose polygon
    vertices are rounded to pixels: it reaches ``sqrt((a cos)^2 + (b sin)^2)`` along x (y alike) plus a pixel
    of rounding, plus 2% of its length in case numpy's angle truncates to the neighbouring degree of the one
    Python's ``math.atan2`` gives the drawing. Dots reach ``JOINT_RADIUS_PX``; hand bones, 2 px wide, run between
    points that carry dots.

    Returns:
        ``(t, 4)`` int64 ``(top, left, height, width)``; ``(0, 0, 0, 0)`` for a frame where nothing is drawn.
    """
    validate_pose(pose, name)
    height, width = _size(pose, size, name)
    t = pose.num_frames
    joints = np.concatenate([pose.body, pose.feet], axis=1)  # (t, 20, 2)
    limb = _limb_geometry(joints, height, width)
    angle = np.radians(np.trunc(np.degrees(np.arctan2(limb.dy.astype(np.float64), limb.dx.astype(np.float64)))))
    a, b = limb.half_lengths.astype(np.float64), float(LIMB_HALF_WIDTH_PX)
    slack = 0.02 * a + 1.0
    limb_reach_x = np.ceil(np.hypot(a * np.cos(angle), b * np.sin(angle)) + slack).astype(np.int64)
    limb_reach_y = np.ceil(np.hypot(a * np.sin(angle), b * np.cos(angle)) + slack).astype(np.int64)
    hand_xs, hand_ys, hand_shown = _hand_pixels(pose, height, width)
    joint_xs, joint_ys, joint_present = _joint_pixels(joints, height, width)
    assert HAND_LINE_THICKNESS_PX // 2 + 1 <= _DOT_REACH  # bones between dotted points stay inside the dots' reach
    # (t, k) candidates: centre, reach and whether drawn, for limbs, joint dots and hand dots.
    dots = np.full((t, joint_xs.shape[1] + hand_xs[0].size), _DOT_REACH)
    xs = np.concatenate([limb.centre_x, joint_xs, hand_xs.reshape(t, -1)], axis=1)
    ys = np.concatenate([limb.centre_y, joint_ys, hand_ys.reshape(t, -1)], axis=1)
    reach_x, reach_y = np.concatenate([limb_reach_x, dots], axis=1), np.concatenate([limb_reach_y, dots], axis=1)
    drawn = np.concatenate([limb.drawn, joint_present, hand_shown.reshape(t, -1)], axis=1)
    big = np.int64(1) << 40
    top = np.where(drawn, ys - reach_y, big).min(axis=1).clip(0, height)
    bottom = np.where(drawn, ys + reach_y + 1, -big).max(axis=1).clip(0, height)
    left = np.where(drawn, xs - reach_x, big).min(axis=1).clip(0, width)
    right = np.where(drawn, xs + reach_x + 1, -big).max(axis=1).clip(0, width)
    empty = (bottom <= top) | (right <= left)
    boxes = np.stack([top, left, bottom - top, right - left], axis=1).astype(np.int64)
    boxes[empty] = 0
    return boxes


def render_pose_label_crops(
    pose: PoseSequence,
    boxes: np.ndarray,
    out: np.ndarray,
    size: tuple[int, int] | None = None,
    name: str = "pose",
    out_is_blank: bool = False,
) -> np.ndarray:
    """``render_pose_labels`` drawing only each frame's box, the crops stored back to back in ``out``.

    Frame ``k``'s crop is ``boxes[k]`` of its label image, row-major; crops follow each other in frame order, so
    ``out`` holds ``sum(height * width)`` bytes. With the boxes of ``pose_label_boxes`` the crops hold every drawn
    pixel (drawing happens in image coordinates translated by whole pixels, which OpenCV rasterises identically).

    Args:
        pose, size, name: as for ``render_pose``.
        boxes: ``(t, 4)`` ``(top, left, height, width)`` from ``pose_label_boxes(pose, size)``.
        out: ``(sum of box areas,)`` uint8 C-contiguous buffer; cleared first unless ``out_is_blank``.
        out_is_blank: the caller guarantees ``out`` is all zeros.
    """
    validate_pose(pose, name)
    height, width = _size(pose, size, name)
    boxes = np.asarray(boxes, dtype=np.int64)
    if boxes.shape != (pose.num_frames, 4):
        raise ValueError(f"{name}: boxes must be ({pose.num_frames}, 4), got {boxes.shape}")
    areas = boxes[:, 2] * boxes[:, 3]
    if out.shape != (int(areas.sum()),) or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ValueError(
            f"{name}: crop buffer must be contiguous uint8 of shape ({int(areas.sum())},), got {out.dtype} {out.shape}"
        )
    if not out_is_blank:
        out[...] = 0
    offsets = np.concatenate([[0], np.cumsum(areas)[:-1]]).astype(np.int64)
    _draw(pose, _Canvas(out, boxes, offsets), height, width, LABEL_COLOURS)
    return out


def _size(pose: PoseSequence, size: tuple[int, int] | None, name: str) -> tuple[int, int]:
    height, width = pose.frame_size if size is None else (int(size[0]), int(size[1]))
    if height < 1 or width < 1:
        raise ValueError(f"{name}: image size must be positive, got (height, width) = ({height}, {width})")
    return height, width


def _render(
    pose: PoseSequence,
    size: tuple[int, int] | None,
    out: np.ndarray | None,
    name: str,
    colours: DrawColours,
    channels: int,
    blank: bool,
) -> np.ndarray:
    validate_pose(pose, name)
    height, width = _size(pose, size, name)
    shape = (pose.num_frames, height, width) + ((channels,) if channels > 1 else ())
    if out is None:
        out = np.zeros(shape, dtype=np.uint8)
    else:
        if out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
            raise ValueError(
                f"{name}: output buffer must be C-contiguous uint8 of shape {shape}, got {out.dtype} {out.shape}"
            )
        if not blank:
            out[...] = 0
    t = pose.num_frames
    boxes = np.tile(np.array([0, 0, height, width], dtype=np.int64), (t, 1))
    offsets = np.arange(t, dtype=np.int64) * (height * width)
    canvas = _Canvas(out.reshape((t * height * width,) + shape[3:]), boxes, offsets)
    _draw(pose, canvas, height, width, colours)
    return out


@dataclass(frozen=True)
class _Canvas:
    """Where each frame is drawn: frame ``k`` is the window ``boxes[k] = (top, left, height, width)`` of its image,
    stored row-major from ``flat[offsets[k]]`` (whole frames: every box is the image)."""

    flat: np.ndarray  # (n,) labels or (n, 3) RGB
    boxes: np.ndarray  # (t, 4) int64
    offsets: np.ndarray  # (t,) int64

    def frames(self) -> list[np.ndarray]:
        """Per frame a 2-D view into ``flat`` (OpenCV draws into it)."""
        return [
            self.flat[o : o + h * w].reshape((h, w) + self.flat.shape[1:])
            for o, (_, _, h, w) in zip(self.offsets.tolist(), self.boxes.tolist(), strict=True)
        ]


def _draw(pose: PoseSequence, canvas: _Canvas, height: int, width: int, colours: DrawColours) -> None:
    """Paint every frame in the official order: limbs, joint dots, then per hand its bones and dots.

    Each frame is a separate canvas, so drawing one layer for all frames before the next layer gives every frame
    exactly the per-frame order; it lets each layer of same-sized dots be stamped for all frames at once.
    Coordinates are computed in the ``(height, width)`` image, as the official code does, then moved by whole
    pixels into each frame's box.
    """
    views = canvas.frames()
    shifts = canvas.boxes[:, [1, 0]].astype(np.int32)  # (t, 2) (left, top): ellipse2Poly's dtype
    origins = shifts.tolist()
    joints = np.concatenate([pose.body, pose.feet], axis=1)  # (t, 20, 2), the official body-and-feet order
    for frame, limb, centre, axes, angle in _limbs(joints, height, width):
        polygon = cv2.ellipse2Poly(centre, axes, angle, 0, 360, 1)
        polygon -= shifts[frame]
        cv2.fillConvexPoly(views[frame], polygon, colours.limbs[limb])
    joint_xs, joint_ys, joint_present = _joint_pixels(joints, height, width)
    for joint in range(joints.shape[1]):  # joint order decides overlaps
        frames = np.flatnonzero(joint_present[:, joint])
        _stamp_dots(canvas, frames, joint_xs[frames, joint], joint_ys[frames, joint], colours.joints[joint])
    hand_xs, hand_ys, hand_shown = _hand_pixels(pose, height, width)
    for hand in range(2):
        xs, ys, shown = hand_xs[:, hand], hand_ys[:, hand], hand_shown[:, hand]
        frames, edges = np.nonzero(shown[:, _EDGE_FROM] & shown[:, _EDGE_TO])  # frame-major, edges in order
        a, b = _EDGE_FROM[edges], _EDGE_TO[edges]
        for frame, edge, x0, y0, x1, y1 in zip(
            frames.tolist(),
            edges.tolist(),
            xs[frames, a].tolist(),
            ys[frames, a].tolist(),
            xs[frames, b].tolist(),
            ys[frames, b].tolist(),
            strict=True,
        ):
            left, top = origins[frame]
            cv2.line(
                views[frame],
                (x0 - left, y0 - top),
                (x1 - left, y1 - top),
                colours.hand_bones[edge],
                thickness=HAND_LINE_THICKNESS_PX,
            )
        frames, points = np.nonzero(shown)
        _stamp_dots(canvas, frames, xs[frames, points], ys[frames, points], colours.hand_dot)


def _joint_pixels(joints: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(xs, ys, present)`` of the ``(t, 20)`` body-and-feet dots; body points have no eps test."""
    present = ~np.all(joints == -1.0, axis=-1)
    xs = (joints[..., 0] * np.float32(width)).astype(np.int64)
    ys = (joints[..., 1] * np.float32(height)).astype(np.int64)
    return xs, ys, present


def _hand_pixels(pose: PoseSequence, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(xs, ys, shown)`` of the ``(t, 2, 21)`` hand points."""
    xs = (pose.hands[..., 0] * np.float32(width)).astype(np.int64)
    ys = (pose.hands[..., 1] * np.float32(height)).astype(np.int64)
    # The official hand test is on the truncated pixel coordinates; missing points (-1) become negative there.
    return xs, ys, (xs > HAND_EPS) & (ys > HAND_EPS)


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


def _stamp_dots(canvas: _Canvas, frames: np.ndarray, xs: np.ndarray, ys: np.ndarray, colour: object) -> None:
    """Filled radius-4 dots of one colour at image pixels ``(xs, ys)`` of ``frames``; overlaps within a layer are
    equal. Each dot is clipped to its frame's box like OpenCV's drawing is clipped to the image."""
    if frames.size == 0:
        return
    top, left, height, width = (canvas.boxes[frames, i] for i in range(4))
    ys, xs = ys - top, xs - left
    py, px = ys[:, None] + _DOT_DY, xs[:, None] + _DOT_DX
    pixels = canvas.offsets[frames, None] + py * width[:, None] + px  # flat pixel index of the frame's box
    reach = _DOT_REACH
    if (ys < reach).any() or (xs < reach).any() or (ys >= height - reach).any() or (xs >= width - reach).any():
        pixels = pixels[(py >= 0) & (py < height[:, None]) & (px >= 0) & (px < width[:, None])]
    canvas.flat[pixels.ravel()] = colour


_LIMB_FIRST = np.array([a for a, _ in LIMBS])
_LIMB_SECOND = np.array([b for _, b in LIMBS])


@dataclass(frozen=True)
class _LimbGeometry:
    """``(t, 19)`` arrays of every limb: drawn (both ends present), integer centre, half-length, end deltas."""

    drawn: np.ndarray
    centre_x: np.ndarray
    centre_y: np.ndarray
    half_lengths: np.ndarray
    dx: np.ndarray
    dy: np.ndarray


def _limb_geometry(joints: np.ndarray, height: int, width: int) -> _LimbGeometry:
    """Same arithmetic as the official code on float32 keypoints: float32 pixel coordinates, their float32 mean
    and length, truncation to int. ``joints`` is ``(t, 20, 2)`` normalised; absent limbs hold garbage."""
    present = ~np.all(joints == -1.0, axis=-1)
    px = joints[..., 0] * np.float32(width)
    py = joints[..., 1] * np.float32(height)
    x0, x1, y0, y1 = px[:, _LIMB_FIRST], px[:, _LIMB_SECOND], py[:, _LIMB_FIRST], py[:, _LIMB_SECOND]
    dx, dy = x0 - x1, y0 - y1
    return _LimbGeometry(
        drawn=present[:, _LIMB_FIRST] & present[:, _LIMB_SECOND],
        centre_x=((x0 + x1) / np.float32(2)).astype(np.int64),
        centre_y=((y0 + y1) / np.float32(2)).astype(np.int64),
        half_lengths=(np.sqrt(dy * dy + dx * dx) / np.float32(2)).astype(np.int64),
        dx=dx,
        dy=dy,
    )


def _limbs(joints: np.ndarray, height: int, width: int) -> Iterator[tuple[int, int, tuple, tuple, int]]:
    """``(frame, limb, centre, axes, angle)`` of every drawn limb, frame-major and in limb order; the angle from
    ``math.atan2`` in degrees truncated to int (Python's libm call, not numpy's, whose SIMD arctan2 may differ in
    the last bit)."""
    g = _limb_geometry(joints, height, width)
    frames, limbs = np.nonzero(g.drawn)
    centres = zip(g.centre_x[frames, limbs].tolist(), g.centre_y[frames, limbs].tolist(), strict=True)
    axes = ((length, LIMB_HALF_WIDTH_PX) for length in g.half_lengths[frames, limbs].tolist())
    angles = (
        int(math.degrees(math.atan2(y, x)))
        for y, x in zip(g.dy[frames, limbs].tolist(), g.dx[frames, limbs].tolist(), strict=True)
    )
    return zip(frames.tolist(), limbs.tolist(), centres, axes, angles, strict=True)


__all__ = ["pose_label_boxes", "render_pose", "render_pose_label_crops", "render_pose_labels"]
