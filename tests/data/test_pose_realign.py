"""Realignment gives the driving clip the anchor's bone lengths while keeping every bone's direction per frame."""

from __future__ import annotations

import numpy as np
import pytest

from animatex_train.data.epi.preview import demo_pose_sequence
from animatex_train.data.epi.realign import RealignConfig, realign_to_anchor
from animatex_train.data.format.keypoints import BODY, KeypointError, PoseSequence, visible
from animatex_train.data.pose.skeleton import BONES, HAND_WRIST, JOINT_PARENT

PARENTS = np.array([max(p, 0) for p in JOINT_PARENT])
BONE_LIST = list(BONES)


def _joints_px(pose: PoseSequence) -> tuple[np.ndarray, np.ndarray]:
    height, width = pose.frame_size
    joints = np.concatenate([pose.body, pose.feet], axis=1).astype(np.float64)
    return joints * [width, height], visible(joints)


def _bones(pose: PoseSequence) -> tuple[np.ndarray, np.ndarray]:
    """``(t, 19, 2)`` bone vectors in pixels and ``(t, 19)`` whether both ends are visible."""
    joints, shown = _joints_px(pose)
    vectors = (joints - joints[:, PARENTS])[:, BONE_LIST]
    return vectors, (shown & shown[:, PARENTS])[:, BONE_LIST]


@pytest.fixture
def driving() -> PoseSequence:
    return demo_pose_sequence(24, (768, 512), seed=11, body_scale=0.75)


@pytest.fixture
def anchor() -> PoseSequence:
    return demo_pose_sequence(1, (768, 512), seed=5, shape_jitter=0.35, body_scale=0.85)


def _assert_lengths_and_directions(out: PoseSequence, driving: PoseSequence, anchor: PoseSequence) -> None:
    out_vec, out_ok = _bones(out)
    in_vec, in_ok = _bones(driving)
    anchor_vec, anchor_ok = _bones(anchor)
    both = out_ok & in_ok & anchor_ok[0]
    assert both.mean() > 0.9, "too few bones survive for a meaningful check"
    out_len = np.linalg.norm(out_vec, axis=-1)
    anchor_len = np.broadcast_to(np.linalg.norm(anchor_vec[0], axis=-1), out_len.shape)
    np.testing.assert_array_less(np.abs(out_len - anchor_len)[both] / anchor_len[both], 1e-3)
    out_angle = np.arctan2(out_vec[..., 1], out_vec[..., 0])
    in_angle = np.arctan2(in_vec[..., 1], in_vec[..., 0])
    angle_error = np.abs(np.angle(np.exp(1j * (out_angle - in_angle))))
    np.testing.assert_array_less(angle_error[both], 1e-4)


def test_bone_lengths_become_the_anchors_and_directions_stay(driving, anchor):
    out = realign_to_anchor(driving, anchor)
    assert out.frame_size == driving.frame_size and out.num_frames == driving.num_frames
    in_len = np.linalg.norm(_bones(driving)[0], axis=-1)
    anchor_len = np.linalg.norm(_bones(anchor)[0][0], axis=-1)
    assert np.abs(in_len[0] / anchor_len - 1).max() > 0.1  # the shapes really differ
    _assert_lengths_and_directions(out, driving, anchor)


def test_neck_goes_to_anchor_and_motion_is_scaled(driving, anchor):
    out = realign_to_anchor(driving, anchor)
    neck_out, _ = _joints_px(out)
    neck_in, _ = _joints_px(driving)
    anchor_neck, _ = _joints_px(anchor)
    neck = BODY["neck"]
    np.testing.assert_allclose(neck_out[0, neck], anchor_neck[0, neck], atol=1e-3)
    still = realign_to_anchor(driving, anchor, RealignConfig(scale_root_motion=False))
    neck_still, _ = _joints_px(still)
    np.testing.assert_allclose(
        neck_still[:, neck] - neck_still[0, neck], neck_in[:, neck] - neck_in[0, neck], atol=1e-3
    )
    # Scaled motion: x by the shoulder-width ratio, y by the torso-height ratio (shoulder centre to hip centre).
    shoulders, hips = [BODY["right_shoulder"], BODY["left_shoulder"]], [BODY["right_hip"], BODY["left_hip"]]

    def width_and_torso(joints: np.ndarray) -> np.ndarray:
        width = np.linalg.norm(joints[0, shoulders[0]] - joints[0, shoulders[1]])
        torso = np.linalg.norm(joints[0, shoulders].mean(0) - joints[0, hips].mean(0))
        return np.array([width, torso])

    expected_scale = width_and_torso(anchor_neck) / width_and_torso(neck_in)
    assert np.abs(expected_scale - 1).max() > 0.05
    np.testing.assert_allclose(
        neck_out[:, neck] - neck_out[0, neck], expected_scale * (neck_in[:, neck] - neck_in[0, neck]), atol=1e-3
    )


def test_invariant_under_translation_of_the_input(driving, anchor):
    shift = np.array([0.04, -0.03], dtype=np.float32)

    def moved(points: np.ndarray) -> np.ndarray:
        return np.where(visible(points)[..., None], points + shift, points).astype(np.float32)

    shifted = PoseSequence(
        moved(driving.body), moved(driving.feet), moved(driving.hands), moved(driving.face), driving.frame_size
    )
    np.testing.assert_allclose(
        realign_to_anchor(shifted, anchor).to_array(), realign_to_anchor(driving, anchor).to_array(), atol=2e-5
    )


def test_missing_points_stay_missing_and_visible_bones_still_match(driving, anchor):
    rng = np.random.default_rng(3)
    body, feet, hands, face = driving.body.copy(), driving.feet.copy(), driving.hands.copy(), driving.face.copy()
    body[rng.random(body.shape[:2]) < 0.15] = -1.0
    body[5:9, BODY["neck"]] = -1.0  # a missing root is interpolated, never output
    feet[rng.random(feet.shape[:2]) < 0.15] = -1.0
    hands[rng.random(hands.shape[:3]) < 0.15] = -1.0
    hands[:, 1, 0] = -1.0
    face[rng.random(face.shape[:2]) < 0.15] = -1.0
    holey = PoseSequence(body, feet, hands, face, driving.frame_size)
    out = realign_to_anchor(holey, anchor)
    for before, after in ((holey.body, out.body), (holey.feet, out.feet), (holey.hands, out.hands)):
        assert not (visible(after) & ~visible(before)).any()
    assert not (visible(out.face) & ~visible(holey.face)).any()
    assert (~visible(out.body[5:9, BODY["neck"]])).all()
    out_vec, out_ok = _bones(out)
    in_vec, in_ok = _bones(holey)
    anchor_len = np.linalg.norm(_bones(anchor)[0][0], axis=-1)
    both = out_ok & in_ok
    out_len = np.linalg.norm(out_vec, axis=-1)
    np.testing.assert_array_less(np.abs(out_len / anchor_len - 1)[both], 1e-3)


def test_hands_move_rigidly_with_their_wrist(driving, anchor):
    out = realign_to_anchor(driving, anchor)
    height, width = driving.frame_size
    for hand, wrist in enumerate(HAND_WRIST):
        ok = visible(out.body[:, wrist])[:, None] & visible(out.hands[:, hand]) & visible(driving.hands[:, hand])
        offset_out = (out.hands[:, hand] - out.body[:, wrist, None]) * [width, height]
        offset_in = (driving.hands[:, hand] - driving.body[:, wrist, None]) * [width, height]
        assert ok.sum() > 100
        np.testing.assert_allclose(offset_out[ok], offset_in[ok], atol=2e-3)


def test_own_first_frame_as_anchor_is_identity(driving):
    out = realign_to_anchor(driving, driving.select([0]))
    np.testing.assert_allclose(out.to_array(), driving.to_array(), atol=1e-6)
    assert np.array_equal(visible(out.to_array()), visible(driving.to_array()))


def test_clip_without_a_neck_is_returned_unchanged(driving, anchor):
    body = driving.body.copy()
    body[:, BODY["neck"]] = -1.0
    no_neck = PoseSequence(body, driving.feet, driving.hands, driving.face, driving.frame_size)
    np.testing.assert_array_equal(realign_to_anchor(no_neck, anchor).to_array(), no_neck.to_array())


def test_bad_input_raises_naming_the_sample(driving, anchor):
    body = driving.body.copy()
    body[2, 4] = (np.nan, 0.3)
    with pytest.raises(KeypointError, match="clip-42 body: non-finite"):
        realign_to_anchor(
            PoseSequence(body, driving.feet, driving.hands, None, driving.frame_size), anchor, name="clip-42"
        )
    wrong = PoseSequence(driving.body, driving.feet, driving.hands[:, :1], None, driving.frame_size)
    with pytest.raises(KeypointError, match="clip-42: hands keypoints must have shape"):
        realign_to_anchor(wrong, anchor, name="clip-42")
    headless = anchor.body.copy()
    headless[0, BODY["neck"]] = -1.0
    with pytest.raises(KeypointError, match="anchor: the neck must be visible"):
        realign_to_anchor(driving, PoseSequence(headless, anchor.feet, anchor.hands, None, anchor.frame_size))


def test_missing_elbow_places_the_wrist_by_the_chain_ratio(driving, anchor):
    # With a straight arm (elbow at a fixed fraction of shoulder -> wrist), the chain ratio is exact: hiding the
    # elbow must not move the wrist or the hand.
    shoulder, elbow, wrist = BODY["right_shoulder"], BODY["right_elbow"], BODY["right_wrist"]
    body = driving.body.copy()
    body[:, elbow] = body[:, shoulder] + 0.45 * (body[:, wrist] - body[:, shoulder])
    straight = PoseSequence(body, driving.feet, driving.hands, driving.face, driving.frame_size)
    hidden_body = body.copy()
    hidden_body[3:9, elbow] = -1.0
    hidden = PoseSequence(hidden_body, driving.feet, driving.hands, driving.face, driving.frame_size)
    full, partial = realign_to_anchor(straight, anchor), realign_to_anchor(hidden, anchor)
    assert visible(full.body[3:9, wrist]).all()
    np.testing.assert_allclose(partial.body[:, wrist], full.body[:, wrist], atol=1e-5)
    np.testing.assert_allclose(partial.hands[:, 1], full.hands[:, 1], atol=1e-5)
