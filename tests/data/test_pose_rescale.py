"""Each rescale op changes exactly its own bones or parts, hierarchically, and nothing else."""

from __future__ import annotations

import numpy as np
import pytest

from animatex_train.data.epi.preview import demo_pose_sequence
from animatex_train.data.epi.rescale import (
    GROUP_BONES,
    OPS,
    PARTS,
    RescaleConfig,
    RescalePlan,
    add_parts,
    apply_rescale_plan,
    drop_parts,
    sample_rescale_plan,
)
from animatex_train.data.format.keypoints import BODY, KeypointError, PoseSequence, visible
from animatex_train.data.pose.skeleton import BONES, HAND_WRIST, JOINT_PARENT, LEFT_TOES, RIGHT_TOES

PARENTS = np.array([max(p, 0) for p in JOINT_PARENT])


def _only(op: str, **changes) -> RescaleConfig:
    """A config where only ``op`` is enabled, with probability 1."""
    flags = {f"enable_{o}": o == op for o in OPS}
    return RescaleConfig(**flags, **{f"{op}_prob": 1.0}, **changes)


def _bone_vectors(pose: PoseSequence) -> tuple[np.ndarray, np.ndarray]:
    """``(t, 20, 2)`` normalised bone vectors (child - parent) and ``(t, 20)`` both-ends-visible."""
    joints = np.concatenate([pose.body, pose.feet], axis=1).astype(np.float64)
    shown = visible(joints)
    return joints - joints[:, PARENTS], shown & shown[:, PARENTS]


def _pixels(vectors: np.ndarray, pose: PoseSequence) -> np.ndarray:
    height, width = pose.frame_size
    return vectors * [width, height]


@pytest.fixture
def pose() -> PoseSequence:
    return demo_pose_sequence(12, (768, 512), seed=21, body_scale=0.7)


@pytest.fixture
def anchor() -> PoseSequence:
    return demo_pose_sequence(1, (768, 512), seed=2, shape_jitter=0.3, body_scale=0.8)


@pytest.mark.parametrize("op", ["bs", "nf", "al"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_scaling_op_changes_exactly_its_group(pose, op, symmetric):
    plan = sample_rescale_plan(np.random.default_rng(7), _only(op, symmetric=symmetric))
    assert plan.ops == (op,)
    out = apply_rescale_plan(pose, plan, anchor=None)
    before, ok_before = _bone_vectors(pose)
    after, ok_after = _bone_vectors(out)
    ok = ok_before & ok_after
    assert ok[:, list(BONES)].mean() > 0.95
    group = set(GROUP_BONES[op])
    for bone in BONES:
        if bone in group:
            factor = plan.bone_factors[bone]
            assert abs(factor - 1.0) > 1e-3
            new, old = _pixels(after, pose)[ok[:, bone], bone], _pixels(before, pose)[ok[:, bone], bone]
            new_len, old_len = np.linalg.norm(new, axis=-1), np.linalg.norm(old, axis=-1)
            np.testing.assert_allclose(new_len / old_len, factor, rtol=1e-4)
            np.testing.assert_allclose(new / new_len[:, None], old / old_len[:, None], atol=1e-4)  # same direction
        else:
            assert plan.bone_factors[bone] == 1.0
            np.testing.assert_allclose(after[ok[:, bone], bone], before[ok[:, bone], bone], atol=1e-6)
    # Hands are rigid: every hand bone (point minus wrist point) is unchanged.
    hand_shown = visible(pose.hands) & visible(out.hands)
    np.testing.assert_allclose(
        (out.hands - out.hands[:, :, :1])[hand_shown & hand_shown[:, :, :1]],
        (pose.hands - pose.hands[:, :, :1])[hand_shown & hand_shown[:, :, :1]],
        atol=1e-6,
    )
    assert np.array_equal(visible(out.body), visible(pose.body))  # the demo pose stays inside the frame
    if not symmetric:
        pairs = {"bs": ("right_hip", "left_hip"), "nf": None, "al": ("right_elbow", "left_elbow")}[op]
        if pairs:
            assert plan.bone_factors[BODY[pairs[0]]] != plan.bone_factors[BODY[pairs[1]]]


def test_nf_scales_face_points_about_the_nose(pose):
    plan = sample_rescale_plan(np.random.default_rng(3), _only("nf"))
    out = apply_rescale_plan(pose, plan, anchor=None)
    nose = BODY["nose"]
    np.testing.assert_allclose(
        out.face - out.body[:, nose, None], plan.face_scale * (pose.face - pose.body[:, nose, None]), atol=1e-6
    )


def test_drop_marks_exactly_the_chosen_parts_missing(pose):
    packed = pose.to_array()
    for name, part in PARTS.items():
        out = drop_parts(pose, [name]).to_array()
        expected = packed.copy()
        expected[:, list(part.joints)] = -1.0  # joint j is packed row j (body rows, then the two feet rows)
        for hand in part.hands:
            expected[:, 20 + 21 * hand : 41 + 21 * hand] = -1.0
        if part.face:
            expected[:, 62:] = -1.0
        np.testing.assert_array_equal(out, expected, err_msg=name)


def test_drop_plan_removes_present_parts_in_its_order(pose):
    config = _only("drop", max_drop_parts=2)
    for seed in range(5):
        plan = sample_rescale_plan(np.random.default_rng(seed), config)
        out = apply_rescale_plan(pose, plan, anchor=None)
        dropped = list(plan.drop_order[: plan.num_drop])
        np.testing.assert_array_equal(out.to_array(), drop_parts(pose, dropped).to_array())
        assert 1 <= plan.num_drop <= 2


def test_add_fills_only_missing_points_of_the_chosen_parts(pose, anchor):
    gappy = drop_parts(pose, ["left_arm"])
    feet = gappy.feet.copy()
    feet[::3, 1] = -1.0  # right toes missing in some frames
    gappy = PoseSequence(gappy.body, feet, gappy.hands, gappy.face, gappy.frame_size)
    out = add_parts(gappy, ["left_arm"], anchor)
    before, after = gappy.to_array(), out.to_array()
    was_visible = visible(before)
    np.testing.assert_array_equal(after[was_visible], before[was_visible])  # visible points untouched
    grown = visible(after) & ~was_visible
    rows = {BODY["left_elbow"], BODY["left_wrist"], *range(20, 41)}
    assert set(np.flatnonzero(grown.any(axis=0))) == rows  # exactly the left arm and left hand
    # Grown joints sit at parent + the anchor's bone vector (same frame size here).
    height, width = pose.frame_size
    for joint in (BODY["left_elbow"], BODY["left_wrist"]):
        parent = JOINT_PARENT[joint]
        offset = (out.body[:, joint] - out.body[:, parent]) * [width, height]
        anchor_offset = (anchor.body[0, joint] - anchor.body[0, parent]) * [width, height]
        np.testing.assert_allclose(offset, np.broadcast_to(anchor_offset, offset.shape), atol=1e-3)
    wrist = HAND_WRIST[0]
    hand_offset = (out.hands[:, 0] - out.body[:, wrist, None]) * [width, height]
    anchor_hand = (anchor.hands[0, 0] - anchor.body[0, wrist]) * [width, height]
    np.testing.assert_allclose(hand_offset, np.broadcast_to(anchor_hand, hand_offset.shape), atol=1e-3)
    # A part with nothing missing is left alone, and growing the feet fills only the gaps.
    np.testing.assert_array_equal(add_parts(pose, ["head", "left_leg"], anchor).to_array(), pose.to_array())
    toes = add_parts(gappy, ["right_foot"], anchor).to_array()
    changed = np.flatnonzero(np.any(toes != before, axis=(0, 2)))
    assert changed.tolist() == [RIGHT_TOES] and LEFT_TOES != RIGHT_TOES


def test_add_plan_needs_an_anchor(pose):
    plan = sample_rescale_plan(np.random.default_rng(0), _only("add"))
    with pytest.raises(ValueError, match="no anchor"):
        apply_rescale_plan(drop_parts(pose, ["head"]), plan, anchor=None, name="clip-3")


def test_plans_are_reproducible_and_ablations_keep_other_draws():
    full = sample_rescale_plan(np.random.default_rng(9), RescaleConfig(bs_prob=1.0, al_prob=1.0))
    again = sample_rescale_plan(np.random.default_rng(9), RescaleConfig(bs_prob=1.0, al_prob=1.0))
    np.testing.assert_array_equal(full.bone_factors, again.bone_factors)
    assert full.ops == again.ops and full.drop_order == again.drop_order
    without_bs = sample_rescale_plan(np.random.default_rng(9), RescaleConfig(enable_bs=False, bs_prob=1.0, al_prob=1.0))
    assert "bs" in full.ops and "bs" not in without_bs.ops
    al = list(GROUP_BONES["al"])
    np.testing.assert_array_equal(without_bs.bone_factors[al], full.bone_factors[al])
    np.testing.assert_array_equal(without_bs.bone_factors[list(GROUP_BONES["bs"])], 1.0)


def test_at_least_one_op_is_applied():
    config = RescaleConfig(**{f"{op}_prob": 0.0 for op in OPS})
    for seed in range(20):
        assert len(sample_rescale_plan(np.random.default_rng(seed), config).ops) == 1
    none = RescaleConfig(**{f"{op}_prob": 0.0 for op in OPS}, at_least_one_op=False)
    assert sample_rescale_plan(np.random.default_rng(0), none).ops == ()


def test_identity_plan_changes_nothing(pose):
    np.testing.assert_array_equal(apply_rescale_plan(pose, RescalePlan(ops=()), None).to_array(), pose.to_array())


def test_config_and_input_errors(pose):
    with pytest.raises(ValueError, match="arm_length_range"):
        RescaleConfig(arm_length_range=(1.2, 0.8))
    with pytest.raises(ValueError, match="bs_prob"):
        RescaleConfig(bs_prob=1.5)
    with pytest.raises(ValueError, match="unknown part"):
        RescaleConfig(drop_parts=("tail",))
    with pytest.raises(ValueError, match="clip-9: unknown body part 'tail'"):
        drop_parts(pose, ["tail"], name="clip-9")
    body = pose.body.copy()
    body[0, 0] = (0.5, -1.0)
    with pytest.raises(KeypointError, match="clip-9 body.*must be \\(-1, -1\\)"):
        drop_parts(PoseSequence(body, pose.feet, pose.hands, None, pose.frame_size), ["head"], name="clip-9")
