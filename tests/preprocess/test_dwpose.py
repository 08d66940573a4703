"""DWPose on onnxruntime against hand-computed expectations of the official post-processing (tiny ONNX models)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from animatex_train.data.format.keypoints import MISSING
from animatex_train.preprocess.pose.dwpose import DWPoseEstimator, execution_providers
from animatex_train.preprocess.pose.dwpose_ops import first_person_box, letterbox
from animatex_train.preprocess.pose.tiny_dwpose import detector_output, tiny_pose_keypoints, write_tiny_dwpose

# OpenPose-18 slot -> COCO-17 index, written out from the OpenPose and COCO keypoint definitions (not from the code).
OPENPOSE_FROM_COCO = {
    0: 0,
    2: 6,
    3: 8,
    4: 10,
    5: 5,
    6: 7,
    7: 9,
    8: 12,
    9: 14,
    10: 16,
    11: 11,
    12: 13,
    13: 15,
    14: 2,
    15: 1,
    16: 4,
    17: 3,
}


def _expected(frame_h: int, frame_w: int) -> np.ndarray:
    """The packed (130, 2) keypoints the official pipeline gives for the tiny models' fixed outputs."""
    ratio = min(640 / frame_h, 640 / frame_w)
    # Person anchor: stride 32, grid (6, 10), offset (0.25, 0) -> centre (200, 320); box 160 x 480 (letterbox px).
    x1, y1, x2, y2 = (200 - 80) / ratio, (320 - 240) / ratio, (200 + 80) / ratio, (320 + 240) / ratio
    center = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
    w, h = (x2 - x1) * 1.25, (y2 - y1) * 1.25
    w, h = (w, w / 0.75) if w > h * 0.75 else (h * 0.75, h)  # widen to the 288:384 input aspect
    points, scores = tiny_pose_keypoints()
    image = points / np.array([288.0, 384.0]) * np.array([w, h]) + center - np.array([w, h]) / 2
    normalised = image / np.array([frame_w, frame_h])
    visible = scores >= 0.3
    packed = np.full((130, 2), MISSING)
    for slot, coco in OPENPOSE_FROM_COCO.items():
        if visible[coco]:
            packed[slot] = normalised[coco]
    packed[1] = (normalised[5] + normalised[6]) / 2  # neck: both shoulders score 0.9
    if visible[17] and visible[18]:
        packed[18] = (normalised[17] + normalised[18]) / 2
    if visible[20] and visible[21]:
        packed[19] = (normalised[20] + normalised[21]) / 2
    packed[20:41] = np.where(visible[91:112, None], normalised[91:112], MISSING)  # left hand
    packed[41:62] = np.where(visible[112:133, None], normalised[112:133], MISSING)  # right hand
    packed[62:130] = np.where(visible[23:91, None], normalised[23:91], MISSING)  # face
    outside = np.any((packed < 0) | (packed > 1), axis=-1) & np.any(packed != MISSING, axis=-1)
    packed[outside] = MISSING
    return packed


@pytest.mark.parametrize("size", [(480, 320), (758, 512), (1216, 768)])
def test_estimate_matches_the_official_post_processing(tiny_dwpose, size):
    frames = np.random.default_rng(0).integers(0, 255, (3, *size, 3), dtype=np.uint8)
    pose = DWPoseEstimator(*tiny_dwpose, device="cpu").estimate(frames)
    assert pose.frame_size == size and pose.num_frames == 3
    expected = _expected(*size)
    for frame in pose.to_array():
        np.testing.assert_allclose(frame, expected, atol=2e-6)
    assert not pose.body_visible[0, 16]  # right ear scored 0.2
    assert (pose.feet[0, 0] == MISSING).all() and (pose.feet[0, 1] != MISSING).all()  # left small toe scored 0.25
    assert pose.face is not None and pose.hands.shape == (3, 2, 21, 2)


def test_dynamic_batch_gives_the_same_keypoints(tiny_dwpose, tmp_path):
    dynamic = write_tiny_dwpose(tmp_path, dynamic_batch=True)
    frames = np.random.default_rng(1).integers(0, 255, (5, 240, 160, 3), dtype=np.uint8)
    batched = DWPoseEstimator(*dynamic, batch_size=4)
    assert batched.det_batch == 4 and batched.pose_batch == 4
    single = DWPoseEstimator(*tiny_dwpose)
    assert single.det_batch == 1 and single.pose_batch == 1
    np.testing.assert_array_equal(batched.estimate(frames).to_array(), single.estimate(frames).to_array())


def test_first_person_is_the_best_scoring_person_box():
    raw = detector_output()
    box = first_person_box(raw, (640, 640), 1.0)
    np.testing.assert_allclose(box, [120, 80, 280, 560], atol=1e-4)  # not the weaker person, not the non-person
    raw[:, 5] = 0.0  # no person class anywhere
    assert first_person_box(raw, (640, 640), 1.0) is None


def test_letterbox_pads_bottom_right_with_114():
    image = np.zeros((100, 200, 3), dtype=np.uint8)
    chw, ratio = letterbox(image, (640, 640))
    assert ratio == pytest.approx(3.2) and chw.shape == (3, 640, 640) and chw.dtype == np.float32
    assert (chw[:, :320] == 0).all() and (chw[:, 320:] == 114).all()


def test_wrong_model_shapes_are_reported(tmp_path):
    det, _ = write_tiny_dwpose(tmp_path)
    with pytest.raises(ValueError, match="expected 2 outputs"):
        DWPoseEstimator(det, det)  # the detector file given as the pose model


def test_execution_providers():
    assert execution_providers("cpu") == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert execution_providers("auto") == ["CPUExecutionProvider"]
        with pytest.raises(ValueError, match="onnxruntime-gpu"):
            execution_providers("cuda")
