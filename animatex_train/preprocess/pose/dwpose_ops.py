"""DWPose pre- and post-processing, re-implemented from Animate-X's official ``dwpose/`` (docs/official_release.md §7).

Pure numpy/OpenCV, no model: YOLOX letterbox and box decoding, the top-down affine person crop, SimCC
decoding, and the Animate-X post-processing (first person only, neck insertion, OpenPose-18 order, foot
midpoints, score threshold 0.3, normalisation by the frame size). Every numeric choice follows the
official code so keypoints match what Animate-X was trained and evaluated with:

* the images are BGR (the official script feeds ``cv2.VideoCapture`` frames to both models);
* the letterbox pads with 114 on the bottom/right and keeps 0-255 values (YOLOX's convention);
* the person crop pads the box by 1.25, widens it to the model's aspect ratio, and normalises with the
  ImageNet mean/std in the order the official code writes them (applied to BGR channels);
* SimCC maxima are divided by the split ratio 2.0, and a point's score is the smaller of its x and y maxima.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from animatex_train.data.format.keypoints import MISSING, NUM_POINTS, POINT_SLICES

NUM_WHOLEBODY = 133  # COCO-WholeBody: 17 body, 6 feet, 68 face, 2 x 21 hands
DET_SCORE_THRESHOLD = 0.3  # official: NMS at 0.1, then boxes with score > 0.3 and class 0 (person)
POSE_PADDING = 1.25
SIMCC_SPLIT_RATIO = 2.0
SCORE_THRESHOLD = 0.3  # official: ``candidate[score < 0.3] = -1``
POSE_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
POSE_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
_YOLOX_STRIDES = (8, 16, 32)
# The official Wholebody maps mmpose (COCO) order to OpenPose order after inserting the neck at 17.
_MMPOSE_IDX = [17, 6, 8, 10, 7, 9, 12, 14, 16, 13, 15, 2, 1, 4, 3]
_OPENPOSE_IDX = [1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17]


def letterbox(image: np.ndarray, input_size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """YOLOX input: resize keeping the aspect ratio, pad bottom/right with 114.

    Args:
        image: ``(h, w, 3)`` uint8 BGR.
        input_size: ``(height, width)`` of the detector input.

    Returns:
        ``(3, height, width)`` float32 in 0..255, and the resize ratio.
    """
    padded = np.full((input_size[0], input_size[1], 3), 114, dtype=np.uint8)
    ratio = min(input_size[0] / image.shape[0], input_size[1] / image.shape[1])
    new_w, new_h = int(image.shape[1] * ratio), int(image.shape[0] * ratio)
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR).astype(np.uint8)
    padded[:new_h, :new_w] = resized
    return np.ascontiguousarray(padded.transpose(2, 0, 1), dtype=np.float32), ratio


@lru_cache(maxsize=4)
def _yolox_grid(input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    grids, strides = [], []
    for stride in _YOLOX_STRIDES:
        h, w = input_size[0] // stride, input_size[1] // stride
        xv, yv = np.meshgrid(np.arange(w), np.arange(h))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(np.full((h * w, 1), stride))
    return np.concatenate(grids, 0), np.concatenate(strides, 0)


def first_person_box(raw: np.ndarray, input_size: tuple[int, int], ratio: float) -> np.ndarray | None:
    """The first person box of the official detector post-processing, in image pixels.

    The official code decodes every anchor, runs class-aware NMS (IoU 0.45, score > 0.1), keeps person
    boxes with score > 0.3 and uses the first one. NMS keeps boxes in descending score order and the top
    box always survives, so the first person is the highest-scoring person anchor: NMS itself cannot
    change the result and is not run.

    Args:
        raw: ``(anchors, 5 + classes)`` detector output (box offsets, objectness, class probabilities).
        input_size: ``(height, width)`` of the detector input.
        ratio: the letterbox ratio.

    Returns:
        ``(4,)`` float64 ``x1, y1, x2, y2``, or None when no person scores above 0.3.
    """
    grid, strides = _yolox_grid(input_size)
    if raw.shape[0] != grid.shape[0]:
        raise ValueError(f"detector gave {raw.shape[0]} anchors, a {input_size} YOLOX input has {grid.shape[0]}")
    raw = raw.astype(np.float32)  # the official arithmetic is float32 throughout
    person = raw[:, 4] * raw[:, 5]
    valid = np.flatnonzero(person > 0.1)
    if valid.size == 0:
        return None
    order = person[valid].argsort()[::-1]  # the official tie order
    best = valid[order[0]]
    if person[best] <= DET_SCORE_THRESHOLD:
        return None
    center = ((raw[best, :2] + grid[best]) * strides[best]).astype(np.float32)
    size = (np.exp(raw[best, 2:4]) * strides[best]).astype(np.float32)
    box = np.concatenate([center - size / 2.0, center + size / 2.0]).astype(np.float32) / np.float32(ratio)
    return box.astype(np.float64)


def _warp_matrix(center: np.ndarray, scale: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    """The official three-point affine (rotation 0) mapping the box onto the model input."""
    dst_w, dst_h = output_size
    src_dir = np.array([0.0, scale[0] * -0.5])
    dst_dir = np.array([0.0, dst_w * -0.5])
    src = np.zeros((3, 2), dtype=np.float32)
    src[0] = center
    src[1] = center + src_dir
    src[2] = src[1] + np.array([-(src[0] - src[1])[1], (src[0] - src[1])[0]])
    dst = np.zeros((3, 2), dtype=np.float32)
    dst[0] = [dst_w * 0.5, dst_h * 0.5]
    dst[1] = dst[0] + dst_dir
    dst[2] = dst[1] + np.array([-(dst[0] - dst[1])[1], (dst[0] - dst[1])[0]])
    return cv2.getAffineTransform(src, dst)


def crop_person(
    image: np.ndarray, box: np.ndarray, input_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-down crop of one person for the pose model.

    Args:
        image: ``(h, w, 3)`` uint8 BGR.
        box: ``(4,)`` ``x1, y1, x2, y2`` in pixels.
        input_size: ``(height, width)`` of the pose model input.

    Returns:
        ``(3, height, width)`` float32 normalised crop, the box center ``(2,)`` and the aspect-fixed box
        size ``(2,)`` (``w, h`` in pixels) needed to map the keypoints back.
    """
    height, width = input_size
    x1, y1, x2, y2 = (float(v) for v in box)
    center = np.array([x1 + x2, y1 + y2]) * 0.5
    scale = np.array([x2 - x1, y2 - y1]) * POSE_PADDING
    aspect = width / height
    if scale[0] > scale[1] * aspect:
        scale = np.array([scale[0], scale[0] / aspect])
    else:
        scale = np.array([scale[1] * aspect, scale[1]])
    matrix = _warp_matrix(center, scale, (width, height))
    crop = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR)
    # float32 rather than the official float64: 5x faster, and the model input is float32 either way.
    crop = (crop.astype(np.float32) - POSE_MEAN) / POSE_STD
    return np.ascontiguousarray(crop.transpose(2, 0, 1), dtype=np.float32), center, scale


def decode_simcc(
    simcc_x: np.ndarray, simcc_y: np.ndarray, input_size: tuple[int, int], center: np.ndarray, scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """SimCC maxima -> keypoints in image pixels, and scores.

    Args:
        simcc_x: ``(k, width * 2)`` x-axis classification of each keypoint.
        simcc_y: ``(k, height * 2)``.
        input_size: ``(height, width)`` of the pose model input.
        center: box center from ``crop_person``.
        scale: aspect-fixed box size from ``crop_person``.

    Returns:
        ``(k, 2)`` float64 pixel coordinates and ``(k,)`` scores.
    """
    locs = np.stack([np.argmax(simcc_x, axis=1), np.argmax(simcc_y, axis=1)], axis=-1).astype(np.float32)
    scores = np.minimum(np.amax(simcc_x, axis=1), np.amax(simcc_y, axis=1))
    locs[scores <= 0.0] = -1
    keypoints = locs / SIMCC_SPLIT_RATIO
    model_size = np.array([input_size[1], input_size[0]], dtype=np.float64)
    return keypoints / model_size * scale + center - scale / 2, scores.astype(np.float64)


def to_openpose(keypoints: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Insert the neck (mean of the shoulders) at 17 and reorder the body to OpenPose-18 (official Wholebody).

    Args:
        keypoints: ``(133, 2)`` COCO-WholeBody pixel coordinates.
        scores: ``(133,)``.

    Returns:
        ``(134, 2)`` and ``(134,)``: OpenPose-18 body, 6 feet, 68 face, left hand, right hand.
    """
    info = np.concatenate([keypoints, scores[:, None]], axis=-1)
    neck = info[[5, 6]].mean(axis=0)
    # The neck's score is 1 when both shoulders pass 0.3, else 0 (so it is dropped by the threshold).
    neck[2] = float(info[5, 2] > SCORE_THRESHOLD and info[6, 2] > SCORE_THRESHOLD)
    info = np.insert(info, 17, neck, axis=0)
    info[_OPENPOSE_IDX] = info[_MMPOSE_IDX]
    return info[:, :2], info[:, 2]


def to_packed(keypoints: np.ndarray, scores: np.ndarray, frame_size: tuple[int, int], keep_face: bool) -> np.ndarray:
    """Official ``DWposeDetector`` output -> one frame of the packed ``(130, 2)`` format.

    Normalise by the frame size; points scoring below 0.3 become ``(-1, -1)``; foot point 0 (left toes) is
    the midpoint of the left big and small toe when both are present, foot point 1 the same on the right.
    Points outside the frame become ``(-1, -1)`` afterwards (the official code keeps them; our format
    cannot hold them).

    Args:
        keypoints: ``(134, 2)`` pixel coordinates from ``to_openpose``.
        scores: ``(134,)``.
        frame_size: ``(height, width)`` of the image.
        keep_face: store the 68 face points (else they are missing).
    """
    height, width = frame_size
    points = keypoints / np.array([width, height], dtype=np.float64)
    points[scores < SCORE_THRESHOLD] = MISSING
    packed = np.full((NUM_POINTS, 2), MISSING, dtype=np.float64)
    packed[POINT_SLICES["body"]] = points[:18]
    for foot, (toe_a, toe_b) in enumerate(((18, 19), (21, 22))):
        if np.all(points[[toe_a, toe_b]] != MISSING):
            packed[POINT_SLICES["feet"].start + foot] = (points[toe_a] + points[toe_b]) / 2
    packed[POINT_SLICES["left_hand"]] = points[92:113]
    packed[POINT_SLICES["right_hand"]] = points[113:134]
    if keep_face:
        packed[POINT_SLICES["face"]] = points[24:92]
    outside = np.any((packed < 0.0) | (packed > 1.0) | ~np.isfinite(packed), axis=-1)
    packed[outside] = MISSING
    return packed.astype(np.float32)
