"""Pose alignment: identity, guards, the bone lengths each method promises, the linear fit, manual tweak, preview."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from support.poses import person, with_points

from animatex_train.data.format.keypoints import BODY, MISSING, PoseSequence, visible
from animatex_train.data.pose.skeleton import JOINT_PARENT, validate_pose
from animatex_train.inference.align import LINEAR_JOINTS, align_poses, fallback_mode, preview_alignment
from animatex_train.inference.align_bones import MUSEPOSE_SCALES, UNIANIMATE_BONES

PARTS = ("body", "feet", "hands", "face")
REF_SIZE, DRIVING_SIZE = (768, 512), (720, 1280)


def assert_same_pose(a: PoseSequence, b: PoseSequence, atol: float = 1e-6) -> None:
    for part in PARTS:
        x, y = getattr(a, part), getattr(b, part)
        assert np.array_equal(visible(x), visible(y)), part
        assert np.allclose(x, y, rtol=0, atol=atol), (part, np.abs(x - y).max())


def moving_driver(**overrides) -> PoseSequence:
    """A differently built person in a landscape video, walking and swinging its limbs."""
    settings = dict(
        num_frames=5,
        size=DRIVING_SIZE,
        neck=(600.0, 160.0),
        scale=0.8,
        wiggle=0.25,
        travel=(12.0, 2.0),
        lengths={"right_knee": 1.3, "left_knee": 1.3, "right_elbow": 0.7, "left_elbow": 0.7, "nose": 0.8},
    )
    return person(**{**settings, **overrides})


def pixels(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return points.astype(np.float64) * (size[1], size[0])


@pytest.mark.parametrize("mode", ["none", "unianimate", "musepose", "linear"])
def test_identity_when_the_reference_is_driving_frame_0(mode):
    driving = person(5, wiggle=0.3, travel=(4.0, 1.0))
    driving = with_points(driving, "body", (slice(None), BODY["left_ear"]), (MISSING, MISSING))  # missing everywhere
    driving = with_points(driving, "hands", (3, 1, slice(5, 9)), (MISSING, MISSING))  # a finger on one frame
    if mode == "linear":  # a global fit over all frames is the identity only for a still clip
        driving = driving.select([0, 0, 0])
    aligned, report = align_poses(driving.select([0]), driving, mode)
    assert report.mode == mode and not report.warnings and report.points_outside_frame == 0
    assert_same_pose(aligned, driving)
    assert all(abs(v - 1.0) < 1e-9 for v in report.scales.values())
    if mode == "linear":
        one_frame, _ = align_poses(driving.select([0]), driving.select([0]), mode)
        assert_same_pose(one_frame, driving.select([0]))


def broken_pair() -> tuple[PoseSequence, PoseSequence]:
    """A reference with missing and coincident joints, and a driver with coincident shoulders and knee = hip."""
    ref = person(1, lengths={"left_ankle": 0.8, "right_ankle": 0.8})
    ref = with_points(ref, "body", (0, BODY["left_elbow"]), (MISSING, MISSING))
    ref = with_points(ref, "body", (0, BODY["right_ear"]), (MISSING, MISSING))
    ref = with_points(ref, "body", (0, BODY["right_wrist"]), tuple(ref.body[0, BODY["right_elbow"]]))
    driving = moving_driver()
    for joint, onto in (("left_shoulder", "right_shoulder"), ("right_knee", "right_hip"), ("left_eye", "nose")):
        driving = with_points(driving, "body", (0, BODY[joint]), tuple(driving.body[0, BODY[onto]]))
    driving = with_points(driving, "body", (slice(1, 3), BODY["right_elbow"]), (MISSING, MISSING))
    driving = with_points(driving, "body", (4, BODY["neck"]), (MISSING, MISSING))
    driving = with_points(driving, "hands", (0, 0, 0), (MISSING, MISSING))
    return ref, driving


@pytest.mark.parametrize("mode", ["unianimate", "musepose", "linear"])
def test_missing_and_coincident_joints_give_finite_output(mode):
    ref, driving = broken_pair()
    aligned, report = align_poses(ref, driving, mode)
    assert report.mode == mode
    validate_pose(aligned, "aligned")  # finite, in [0, 1] or (-1, -1)
    for part in PARTS:
        assert np.isfinite(getattr(aligned, part)).all()
        assert not (visible(getattr(aligned, part)) & ~visible(getattr(driving, part))).any(), part  # missing stays
    assert all(np.isfinite(v) for v in report.scales.values())
    if mode == "unianimate":
        expected = {
            "global_sx",
            "right_hip->right_knee",
            "nose->left_eye",
            "left_shoulder->left_elbow",
            "right_elbow->right_wrist",
            "right_eye->right_ear",
        }
        assert set(report.guarded) >= expected
        assert report.global_scale[0] == report.global_scale[1]  # sx fell back to sy
        assert "the ratio would be 0" in report.guarded["right_elbow->right_wrist"]
    if mode == "musepose":
        assert {"shoulder", "face"} <= set(report.guarded) and "arm_upper" not in report.guarded
        assert "inf" in report.guarded["shoulder"]
    # frame 4 lost its neck: its joints still hang from the interpolated one and are drawn
    assert not visible(aligned.body[4, BODY["neck"]])
    assert visible(aligned.body[4, [BODY["nose"], BODY["left_hip"]]]).all()


def test_both_lengths_zero_is_guarded_to_one():
    ref = person(1)
    ref = with_points(ref, "body", (0, BODY["right_knee"]), tuple(ref.body[0, BODY["right_hip"]]))
    driving = moving_driver()
    driving = with_points(driving, "body", (0, BODY["right_knee"]), tuple(driving.body[0, BODY["right_hip"]]))
    _, report = align_poses(ref, driving, "unianimate")
    assert report.scales["right_hip->right_knee"] == 1.0 and report.guarded["right_hip->right_knee"].startswith("0/0")


def test_unianimate_gives_the_align_frame_the_reference_bone_lengths():
    ref = person(1, lengths={"nose": 1.3, "left_ankle": 0.8, "right_ankle": 0.8, "left_elbow": 1.2})
    driving = moving_driver()
    aligned, report = align_poses(ref, driving, "unianimate", align_frame=2)
    assert not report.guarded and report.points_outside_frame == 0
    got, want = pixels(aligned.body[2], REF_SIZE), pixels(ref.body[0], REF_SIZE)
    for joint in UNIANIMATE_BONES:
        parent = JOINT_PARENT[joint]
        assert abs(np.linalg.norm(got[joint] - got[parent]) - np.linalg.norm(want[joint] - want[parent])) < 1e-3
    assert np.allclose(aligned.body[2, BODY["neck"]], ref.body[0, BODY["neck"]], rtol=0, atol=1e-6)
    assert json.loads(json.dumps(report.to_dict()))["scales"]["neck->nose"] == report.scales["neck->nose"]
    assert report.global_scale[0] != report.global_scale[1]  # anisotropic: other frames' bones are not exact


def test_musepose_gives_the_align_frame_the_reference_scales():
    # Left and right differ in the reference; the driver is symmetric, so each side gets the L/R mean.
    ref = person(
        1,
        lengths={
            "nose": 1.3,
            "left_elbow": 1.3,
            "right_wrist": 0.8,
            "left_knee": 0.9,
            "right_ankle": 1.2,
            "left_hip": 1.1,
            "right_hip": 1.1,
            "right_ear": 1.4,
            "left_ear": 1.4,
        },
    )
    driving = moving_driver()
    aligned, report = align_poses(ref, driving, "musepose", align_frame=3)
    assert not report.guarded and report.points_outside_frame == 0
    got, want = pixels(aligned.body[3], REF_SIZE), pixels(ref.body[0], REF_SIZE)

    def length(points: np.ndarray, a, c) -> float:
        def at(spec):
            return points[list(spec) if isinstance(spec, tuple) else spec].reshape(-1, 2).mean(axis=0)

        return float(np.linalg.norm(at(c) - at(a)))

    for name, segments in MUSEPOSE_SCALES.items():
        target = np.mean([length(want, a, c) for a, c in segments])
        for a, c in segments:
            assert abs(length(got, a, c) - target) < 1e-3, name
    assert np.allclose(aligned.body[3, BODY["neck"]], ref.body[0, BODY["neck"]], rtol=0, atol=1e-6)
    # hands are scaled about their wrists by the hand scale, and stay attached
    wrist = BODY["right_wrist"]
    assert np.allclose(aligned.hands[3, 1, 0], aligned.body[3, wrist], atol=1e-6)
    palm = np.linalg.norm(pixels(aligned.hands[3, 1, 5] - aligned.hands[3, 1, 0], REF_SIZE))
    original = np.linalg.norm(pixels(driving.hands[3, 1, 5] - driving.hands[3, 1, 0], DRIVING_SIZE)) * 768 / 720
    assert abs(palm - report.scales["hand"] * original) < 1e-3


def test_linear_recovers_a_known_map():
    ref = person(1, neck=(250.0, 200.0))
    ay, by, bx = 0.8, 0.1, -0.3
    ax = ay * (DRIVING_SIZE[1] / DRIVING_SIZE[0]) * (REF_SIZE[0] / REF_SIZE[1])
    frames = []
    for f in range(4):  # the fitted joints stay put; arms and hands move (they are not fitted, only mapped)
        pose = ref.select([0])
        for joint in ("right_elbow", "right_wrist", "left_elbow", "left_wrist"):
            pose = with_points(pose, "body", (0, BODY[joint]), tuple(pose.body[0, BODY[joint]] + 0.01 * f))
        frames.append(pose)
    arrays = {}
    for part in PARTS:
        stacked = np.concatenate([getattr(p, part) for p in frames]).astype(np.float64)
        arrays[part] = ((stacked - (bx, by)) / (ax, ay)).astype(np.float32)  # the inverse map, into the video
    driving = PoseSequence(**arrays, frame_size=DRIVING_SIZE)
    aligned, report = align_poses(ref, driving, "linear")
    fit = report.linear
    assert fit["num_pairs"] == 4 * len(LINEAR_JOINTS)
    assert np.allclose([fit["ax"], fit["bx"], fit["ay"], fit["by"]], [ax, bx, ay, by], rtol=0, atol=1e-6)
    for part in PARTS:
        expected = np.concatenate([getattr(p, part) for p in frames])
        assert np.allclose(getattr(aligned, part), expected, rtol=0, atol=1e-6), part


def test_manual_scale_and_offset_after_the_mode():
    driving = person(3, wiggle=0.2)
    aligned, report = align_poses(None, driving, "none", align_frame=1, scale=(1.2, 0.8), offset=(0.05, -0.1))
    pivot = driving.body[1, BODY["neck"]].astype(np.float64)
    for part in PARTS:
        points = getattr(driving, part).astype(np.float64)
        expected = np.where(visible(points)[..., None], pivot + (1.2, 0.8) * (points - pivot) + (0.05, -0.1), MISSING)
        assert np.allclose(getattr(aligned, part), expected, rtol=0, atol=1e-6), part
    assert np.allclose(report.pivot, pivot) and report.manual_scale == (1.2, 0.8)
    # after an alignment the pivot is the reference neck, which therefore stays put under a scale
    ref = person(1, lengths={"left_knee": 1.2})
    scaled, report = align_poses(ref, moving_driver(), "unianimate", scale=(0.9, 0.9))
    assert np.allclose(scaled.body[0, BODY["neck"]], ref.body[0, BODY["neck"]], atol=1e-6)
    # points pushed out of the frame become missing, and are counted
    shifted, report = align_poses(None, driving, "none", offset=(0.6, 0.0))
    assert report.points_outside_frame > 0 and (shifted.body[:, :, 0] == MISSING).any()
    validate_pose(shifted, "shifted")


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        (dict(mode="openpose"), "--align"),
        (dict(align_frame=5), "--align_frame"),
        (dict(scale=(1.0, 0.0)), "--pose_scale"),
        (dict(offset=(float("nan"), 0.0)), "--pose_offset"),
    ],
)
def test_bad_flags_are_named(kwargs, flag):
    arguments = dict(ref=person(1), driving=person(5), mode="unianimate") | kwargs
    with pytest.raises(ValueError, match=flag):
        align_poses(**arguments)


def test_fallback_for_a_reference_without_a_usable_pose():
    driving = moving_driver()
    empty = PoseSequence.empty(1, REF_SIZE)
    mode, message = fallback_mode(empty, driving, "unianimate")
    assert mode == "none" and "--align unianimate" in message and "--ref_keypoints" in message
    # three points (nose, neck, a hip) cannot carry per-bone ratios, but can fit the linear map
    thin = PoseSequence.empty(1, REF_SIZE)
    full = person(1)
    body = thin.body.copy()
    for name in ("nose", "neck", "right_hip"):
        body[0, BODY[name]] = full.body[0, BODY[name]]
    thin = PoseSequence(body=body, feet=thin.feet, hands=thin.hands, face=None, frame_size=REF_SIZE)
    assert fallback_mode(thin, driving, "musepose")[0] == "linear"
    aligned, report = align_poses(thin, driving, "musepose")
    assert report.requested_mode == "musepose" and report.mode == "linear" and report.linear is not None
    assert "--ref_keypoints" in report.warnings[0]
    validate_pose(aligned, "aligned")
    assert fallback_mode(None, driving, "linear")[0] == "none"
    assert fallback_mode(person(1), driving, "unianimate") == ("unianimate", None)
    assert align_poses(None, driving, "unianimate")[1].mode == "none"


def test_preview_png(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (96, 64, 3), dtype=np.uint8)
    ref = person(1)
    driving = moving_driver()
    aligned, _ = align_poses(ref, driving, "unianimate")
    path = tmp_path / "nested" / "preview.png"
    preview = preview_alignment(image, ref, aligned.select([0]), path, unaligned_frame_pose=driving.select([0]))
    written = cv2.imread(str(path))[..., ::-1]
    assert preview.shape == written.shape == (96, 128, 3) and np.array_equal(preview, written)
    assert not np.array_equal(preview[:, :64], preview[:, 64:])  # the two driving skeletons differ
    assert (preview[:, :64] != image).any(axis=-1).mean() > 0.02  # skeletons are drawn over the image
    single = preview_alignment(image, None, aligned.select([0]), tmp_path / "one.png")
    assert single.shape == (96, 64, 3)
    with pytest.raises(ValueError, match="uint8"):
        preview_alignment(image.astype(np.float32), ref, aligned, tmp_path / "bad.png")
