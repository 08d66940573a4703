"""The pose renderer draws exactly what the official Animate-X preprocessing draws (as the model sees it, RGB)."""

from __future__ import annotations

import colorsys

import cv2
import numpy as np
import pytest

from animatex_train.data.epi.preview import demo_pose_sequence
from animatex_train.data.format.keypoints import BODY, KeypointError, PoseSequence
from animatex_train.data.pose.render import render_pose

HEIGHT, WIDTH = 200, 300
BLACK = (0, 0, 0)


def _norm(x_px: int, y_px: int, height: int = HEIGHT, width: int = WIDTH) -> tuple[float, float]:
    """Normalised coordinates of a pixel centre (so truncation lands on that pixel)."""
    return (x_px + 0.5) / width, (y_px + 0.5) / height


def _golden_pose() -> PoseSequence:
    """Hand-placed keypoints: neck, right shoulder, right elbow (missing wrist), left leg with toes, left hand."""
    pose = PoseSequence.empty(1, (HEIGHT, WIDTH))
    body, feet, hands = pose.body, pose.feet, pose.hands
    body[0, BODY["neck"]] = _norm(150, 50)
    body[0, BODY["right_shoulder"]] = _norm(100, 50)  # horizontal limb, 50 px
    body[0, BODY["right_elbow"]] = _norm(100, 110)  # vertical limb, 60 px
    body[0, BODY["left_knee"]] = _norm(220, 100)
    body[0, BODY["left_ankle"]] = _norm(220, 160)
    feet[0, 0] = _norm(250, 160)  # left toes
    body[0, BODY["right_ear"]] = (0.0, 0.5)  # a body point at pixel x = 0 is drawn (no eps test for the body)
    hands[0, 0, 0] = _norm(40, 180)  # left hand wrist point
    hands[0, 0, 1] = _norm(60, 180)
    hands[0, 0, 2] = _norm(80, 180)
    hands[0, 0, 5] = _norm(120, 120)
    hands[0, 0, 6] = _norm(160, 120)
    hands[0, 1, 0] = (0.0, 0.25)  # right hand point at pixel x = 0: not drawn (official eps test on int pixels)
    hands[0, 1, 1] = _norm(30, 20)
    return pose


def _px(image: np.ndarray, x: int, y: int) -> tuple[int, ...]:
    return tuple(int(c) for c in image[y, x])


def test_golden_pixels_match_official_colours():
    image = render_pose(_golden_pose())[0]
    assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.uint8
    # Joint dots (full colour): official canvas colour reversed to RGB.
    assert _px(image, 150, 50) == (0, 85, 255)  # neck: canvas (255, 85, 0)
    assert _px(image, 100, 50) == (0, 170, 255)  # right shoulder: canvas (255, 170, 0)
    assert _px(image, 100, 110) == (0, 255, 255)  # right elbow: canvas (255, 255, 0)
    assert _px(image, 250, 160) == (255, 255, 170)  # left toes: canvas (170, 255, 255)
    assert _px(image, 1, 100) == (170, 0, 255)  # right ear at x = 0: canvas (255, 0, 170)
    # Limb midpoints, dimmed by 0.6 (no dot there): neck -> right shoulder is limb 0, canvas (255, 0, 0).
    assert _px(image, 125, 50) == (0, 0, 153)
    assert _px(image, 125, 47) == (0, 0, 153)  # inside the half-width of 4 px
    assert _px(image, 125, 44) == BLACK  # outside it
    assert _px(image, 100, 80) == (0, 102, 153)  # right upper arm, limb 2: canvas (255, 170, 0) -> (153, 102, 0)
    assert _px(image, 220, 130) == (153, 51, 0)  # left shin, limb 11: canvas (0, 85, 255) -> (0, 51, 153)
    assert _px(image, 235, 160) == (51, 0, 153)  # left ankle -> toes, limb 17: canvas (255, 0, 85)
    # A limb with a missing end draws nothing: right elbow -> missing wrist.
    assert _px(image, 100, 130) == BLACK
    # Hands: red dots, rainbow bones (hsv(i / 20), OpenCV rounds half to even: 76.5 -> 76).
    assert _px(image, 40, 180) == (255, 0, 0)
    assert _px(image, 60, 180) == (255, 0, 0)
    assert _px(image, 50, 180) == (0, 0, 255)  # bone 0: canvas (255, 0, 0)
    assert _px(image, 70, 180) == (0, 77, 255)  # bone 1: canvas hsv(0.05) * 255 = (255, 76.50000000000001, 0)
    assert _px(image, 140, 120) == (0, 255, 128)  # bone 5: canvas (127.5, 255, 0), rounded, not truncated
    assert _px(image, 50, 183) == BLACK  # bones are 2 px wide
    assert _px(image, 0, 50) == BLACK and _px(image, 2, 50) == BLACK  # hand point at x = 0 is not drawn
    assert _px(image, 30, 20) == (255, 0, 0)  # its neighbour is drawn, but no bone to the hidden point
    assert _px(image, 15, 35) == BLACK


def test_all_missing_pose_is_black():
    pose = PoseSequence.empty(3, (64, 48), with_face=True)
    assert not render_pose(pose).any()
    assert not render_pose(pose, (32, 32)).any()


def test_face_is_not_drawn():
    empty = PoseSequence.empty(1, (HEIGHT, WIDTH))
    face = np.stack([np.linspace(0.2, 0.8, 68), np.full(68, 0.5)], axis=-1)[None].astype(np.float32)
    pose = PoseSequence(empty.body, empty.feet, empty.hands, face, empty.frame_size)
    assert not render_pose(pose).any()


def test_other_resolution_scales_positions_not_strokes():
    image = render_pose(_golden_pose(), (2 * HEIGHT, 2 * WIDTH))[0]
    # Neck pixel centre (150.5, 50.5) lands on (301, 101) at twice the size; the dot radius stays 4 px.
    assert _px(image, 301, 101) == (0, 85, 255)
    assert _px(image, 305, 101) == (0, 85, 255)
    assert _px(image, 301, 107) != (0, 85, 255)
    assert _px(image, 251, 101) == (0, 0, 153)  # limb midpoint, still 4 px half-width
    assert _px(image, 251, 94) == BLACK


def _reference_render(pose: PoseSequence, frame: int) -> np.ndarray:
    """Straightforward re-statement of the official steps: limbs at full colour, canvas * 0.6, dots, hands."""
    from animatex_train.data.pose.style import CANVAS_COLOURS, HAND_EDGES, LIMBS

    height, width = pose.frame_size
    canvas = np.zeros((height, width, 3), np.uint8)
    joints = np.concatenate([pose.body[frame], pose.feet[frame]])
    present = [not np.all(p == -1) for p in joints]
    for i, (a, b) in enumerate(LIMBS):
        if not (present[a] and present[b]):
            continue
        xs = joints[[a, b], 0] * float(width)
        ys = joints[[a, b], 1] * float(height)
        length = ((ys[0] - ys[1]) ** 2 + (xs[0] - xs[1]) ** 2) ** 0.5
        angle = np.degrees(np.arctan2(float(ys[0] - ys[1]), float(xs[0] - xs[1])))
        polygon = cv2.ellipse2Poly((int(np.mean(xs)), int(np.mean(ys))), (int(length / 2), 4), int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, CANVAS_COLOURS[i])
    canvas = (canvas * 0.6).astype(np.uint8)
    for j in range(20):
        if present[j]:
            cv2.circle(canvas, (int(joints[j, 0] * width), int(joints[j, 1] * height)), 4, CANVAS_COLOURS[j], -1)
    for hand in pose.hands[frame]:
        pixels = [(int(x * width), int(y * height)) for x, y in hand]
        for i, (a, b) in enumerate(HAND_EDGES):
            if min(*pixels[a], *pixels[b]) > 0.01:
                colour = np.array(colorsys.hsv_to_rgb(i / 20.0, 1.0, 1.0)) * 255
                cv2.line(canvas, pixels[a], pixels[b], colour, thickness=2)
        for x, y in pixels:
            if x > 0.01 and y > 0.01:
                cv2.circle(canvas, (x, y), 4, (0, 0, 255), thickness=-1)
    return canvas[..., ::-1]


@pytest.mark.parametrize("frame_size", [(768, 512), (240, 352)])
def test_matches_reference_drawing_on_moving_poses(frame_size):
    rng = np.random.default_rng(1)
    pose = demo_pose_sequence(8, frame_size, seed=4, shape_jitter=0.3)
    body, hands = pose.body.copy(), pose.hands.copy()
    body[rng.random(body.shape[:2]) < 0.15] = -1.0  # missing joints drop their limbs
    hands[rng.random(hands.shape[:3]) < 0.15] = -1.0
    pose = PoseSequence(body, pose.feet, hands, pose.face, frame_size)
    images = render_pose(pose)
    assert images.any()
    for frame in range(pose.num_frames):
        np.testing.assert_array_equal(images[frame], _reference_render(pose, frame))


def test_out_buffer_is_cleared_and_checked():
    pose = _golden_pose()
    buffer = np.full((1, HEIGHT, WIDTH, 3), 7, np.uint8)
    result = render_pose(pose, out=buffer)
    assert result is buffer
    np.testing.assert_array_equal(buffer, render_pose(pose))
    with pytest.raises(ValueError, match="output buffer"):
        render_pose(pose, out=np.zeros((2, HEIGHT, WIDTH, 3), np.uint8))


def test_bad_keypoints_raise_naming_the_sample():
    pose = _golden_pose()
    nan_body = pose.body.copy()
    nan_body[0, 3, 0] = np.nan
    with pytest.raises(KeypointError, match="clip-7.*non-finite"):
        render_pose(PoseSequence(nan_body, pose.feet, pose.hands, None, pose.frame_size), name="clip-7")
    far = pose.hands.copy()
    far[0, 0, 5] = (1.5, 0.2)
    with pytest.raises(KeypointError, match="clip-7 hands.*outside"):
        render_pose(PoseSequence(pose.body, pose.feet, far, None, pose.frame_size), name="clip-7")
    with pytest.raises(KeypointError, match=r"clip-7: body keypoints must have shape \(1, 18, 2\)"):
        render_pose(PoseSequence(pose.body[:, :17], pose.feet, pose.hands, None, pose.frame_size), name="clip-7")


def _edge_pose(frame_size: tuple[int, int]) -> PoseSequence:
    """Moving poses with joints and hand points pushed onto the image borders and corners (clipped dots)."""
    rng = np.random.default_rng(7)
    pose = demo_pose_sequence(6, frame_size, seed=2, shape_jitter=0.3)
    body, feet, hands = pose.body.copy(), pose.feet.copy(), pose.hands.copy()
    for points in (body, feet, hands):
        flat = points.reshape(-1, 2)
        chosen = rng.random(len(flat)) < 0.3
        flat[chosen] = rng.choice([0.0, 1.0, 0.004, 0.996], size=(int(chosen.sum()), 2))
    hands[rng.random(hands.shape[:3]) < 0.1] = -1.0
    return PoseSequence(body, feet, hands, pose.face, frame_size)


@pytest.mark.parametrize("frame_size", [(96, 64), (240, 352)])
def test_border_dots_are_clipped_like_opencv(frame_size):
    pose = _edge_pose(frame_size)
    images = render_pose(pose)
    for frame in range(pose.num_frames):
        np.testing.assert_array_equal(images[frame], _reference_render(pose, frame))


@pytest.mark.parametrize("frame_size", [(768, 512), (96, 64)])
def test_labels_through_the_palette_are_the_rgb_images(frame_size):
    from animatex_train.data.pose.render import render_pose_labels
    from animatex_train.data.pose.style import POSE_PALETTE

    moving = demo_pose_sequence(8, frame_size, seed=4, shape_jitter=0.3)
    for pose in (moving, _edge_pose(frame_size)):
        for size in (None, (frame_size[0] // 2, frame_size[1] // 2)):
            labels = render_pose_labels(pose, size)
            assert labels.dtype == np.uint8 and labels.ndim == 3 and labels.any()
            np.testing.assert_array_equal(POSE_PALETTE[labels], render_pose(pose, size))
    blank = np.zeros((moving.num_frames, *frame_size), np.uint8)
    assert render_pose_labels(moving, out=blank, out_is_blank=True) is blank
    np.testing.assert_array_equal(blank, render_pose_labels(moving))


def _expand_crops(crops: np.ndarray, boxes: np.ndarray, frames: int, size: tuple[int, int]) -> np.ndarray:
    images, offset = np.zeros((frames, *size), np.uint8), 0
    for frame, (top, left, height, width) in enumerate(boxes.tolist()):
        images[frame, top : top + height, left : left + width] = crops[offset : offset + height * width].reshape(
            height, width
        )
        offset += height * width
    return images


@pytest.mark.parametrize("frame_size", [(768, 512), (96, 64), (33, 47)])
def test_label_crops_hold_every_drawn_pixel(frame_size):
    """Drawing only the boxes and putting the crops back gives the whole label images, bit for bit; each box is
    the tight box of the drawn pixels or at most a few pixels wider."""
    from animatex_train.data.pose.render import pose_label_boxes, render_pose_label_crops, render_pose_labels

    rng = np.random.default_rng(0)
    poses = [demo_pose_sequence(6, frame_size, seed=seed, shape_jitter=0.3) for seed in range(25)]
    poses.append(_edge_pose(frame_size))
    for _ in range(25):  # random points anywhere, including on every border, some missing
        pose = PoseSequence.empty(4, frame_size)
        for part in (pose.body, pose.feet, pose.hands):
            part[...] = rng.choice([0.0, 1.0, 0.5 / frame_size[0]], size=part.shape) * (rng.random(part.shape) < 0.2)
            part[...] += rng.random(part.shape) * (part == 0)
            part[rng.random(part.shape[:-1]) < 0.3] = -1.0
        poses.append(pose)
    poses.append(PoseSequence.empty(2, frame_size))
    for pose in poses:
        labels = render_pose_labels(pose, frame_size)
        boxes = pose_label_boxes(pose, frame_size)
        crops = np.full(int((boxes[:, 2] * boxes[:, 3]).sum()), 255, np.uint8)  # garbage: cleared first
        render_pose_label_crops(pose, boxes, crops, frame_size)
        np.testing.assert_array_equal(_expand_crops(crops, boxes, pose.num_frames, frame_size), labels)
        for frame, (top, left, height, width) in enumerate(boxes.tolist()):
            ys, xs = np.nonzero(labels[frame])
            if ys.size == 0:
                assert height == width == 0
                continue
            assert 0 <= top <= ys.min() and ys.max() < top + height <= frame_size[0]
            assert 0 <= left <= xs.min() and xs.max() < left + width <= frame_size[1]
            loose = 3 + 0.01 * max(frame_size)  # not loose: rounding and 2% of a half-limb only
            assert top >= ys.min() - loose and left >= xs.min() - loose
            assert top + height <= ys.max() + 1 + loose and left + width <= xs.max() + 1 + loose


def test_label_crops_check_their_buffer():
    from animatex_train.data.pose.render import pose_label_boxes, render_pose_label_crops

    pose = demo_pose_sequence(2, (64, 48), seed=1)
    boxes = pose_label_boxes(pose)
    with pytest.raises(ValueError, match="crop buffer"):
        render_pose_label_crops(pose, boxes, np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="boxes must be"):
        render_pose_label_crops(pose, boxes[:1], np.zeros(3, np.uint8))
