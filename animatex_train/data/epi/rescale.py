"""Pose rescale (EPI step 4, docs/official_release.md §3): one random combination of body-shape edits per sample.

The paper's appendix groups the rescale pool into five operations (Table 5), implemented here:

* **BS**: body (torso) length and shoulder width: bones neck -> hips and neck -> shoulders.
* **NF**: neck length and face/head size: bone neck -> nose; head bones nose -> eyes -> ears and the face
  points, scaled about the nose.
* **AL**: arm and leg lengths: upper and lower arms, thighs and shins.
* **Add**: re-grow parts that are absent (an arm, a leg, a hand, a foot, the head points) from the anchor's
  relative geometry: a missing joint is placed at its parent plus the anchor's bone vector.
* **Drop**: remove parts (an arm, a leg, a hand, the head points): they become missing in every frame.

Scaling is hierarchical with the neck fixed (``pose_realign.scale_bones``): a bone keeps its direction and its
descendants move with it, so every other bone is unchanged. Ops run in the order Add, BS/NF/AL, Drop (a part is
never grown and dropped in the same edit, and grown parts are rescaled with the rest of the body).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from animatex_train.data.epi.realign import PixelPose, scale_bones
from animatex_train.data.format.keypoints import BODY, MISSING, NUM_BODY, PoseSequence
from animatex_train.data.pose.skeleton import (
    FACE_ROOT,
    HAND_WRIST,
    JOINT_PARENT,
    LEFT_TOES,
    NUM_JOINTS,
    RIGHT_TOES,
    TOPOLOGICAL_ORDER,
    validate_pose,
)

# Bones (named by child joint) of each scaling group.
GROUP_BONES: dict[str, tuple[int, ...]] = {
    "bs": (BODY["right_hip"], BODY["left_hip"], BODY["right_shoulder"], BODY["left_shoulder"]),
    "nf": (BODY["nose"], BODY["right_eye"], BODY["left_eye"], BODY["right_ear"], BODY["left_ear"]),
    "al": (
        BODY["right_elbow"],
        BODY["right_wrist"],
        BODY["left_elbow"],
        BODY["left_wrist"],
        BODY["right_knee"],
        BODY["right_ankle"],
        BODY["left_knee"],
        BODY["left_ankle"],
    ),
}


@dataclass(frozen=True)
class Part:
    """A removable / re-growable body part: joints, whole hands (0 = left, 1 = right) and the face."""

    joints: tuple[int, ...] = ()
    hands: tuple[int, ...] = ()
    face: bool = False


# The head part keeps the nose: it marks where the head is, and the neck limb hangs from it.
PARTS: dict[str, Part] = {
    "left_arm": Part(joints=(BODY["left_elbow"], BODY["left_wrist"]), hands=(0,)),
    "right_arm": Part(joints=(BODY["right_elbow"], BODY["right_wrist"]), hands=(1,)),
    "left_leg": Part(joints=(BODY["left_knee"], BODY["left_ankle"], LEFT_TOES)),
    "right_leg": Part(joints=(BODY["right_knee"], BODY["right_ankle"], RIGHT_TOES)),
    "left_hand": Part(hands=(0,)),
    "right_hand": Part(hands=(1,)),
    "left_foot": Part(joints=(LEFT_TOES,)),
    "right_foot": Part(joints=(RIGHT_TOES,)),
    "head": Part(joints=(BODY["right_eye"], BODY["left_eye"], BODY["right_ear"], BODY["left_ear"]), face=True),
}
SCALE_OPS = ("bs", "nf", "al")
OPS = ("add", "bs", "nf", "al", "drop")


@dataclass(frozen=True)
class RescaleConfig:
    """The rescale pool: which ops may run, how often, and how strongly.

    Each enabled op is applied independently with its probability; factors are drawn uniformly from the ranges.
    Ranges are multiplicative length factors (1.0 = unchanged).

    Attributes:
        enable_bs: body (torso) and shoulder lengths.
        enable_nf: neck length and head/face size.
        enable_al: arm and leg lengths.
        enable_add: re-grow absent parts from the anchor.
        enable_drop: remove parts.
        bs_prob: probability of the BS op.
        nf_prob: probability of the NF op.
        al_prob: probability of the AL op.
        add_prob: probability of the Add op.
        drop_prob: probability of the Drop op.
        body_length_range: torso (neck -> hips) factor.
        shoulder_width_range: neck -> shoulder factor.
        neck_length_range: neck -> nose factor.
        face_scale_range: head bones and face points factor.
        arm_length_range: upper and lower arm factor.
        leg_length_range: thigh and shin factor.
        symmetric: one factor for both sides of the body (cartoon characters are mostly symmetric); else one
            per side.
        add_parts: parts Add may re-grow.
        drop_parts: parts Drop may remove.
        max_add_parts: Add re-grows 1..max_add_parts of the absent parts.
        max_drop_parts: Drop removes 1..max_drop_parts of the present parts.
        at_least_one_op: when no op was drawn, apply one enabled op chosen uniformly, so a sample that goes
            through the rescale pool is always edited ("one random combination" of the paper).
    """

    enable_bs: bool = True
    enable_nf: bool = True
    enable_al: bool = True
    enable_add: bool = True
    enable_drop: bool = True
    bs_prob: float = 0.5
    nf_prob: float = 0.5
    al_prob: float = 0.5
    add_prob: float = 0.3
    drop_prob: float = 0.3
    body_length_range: tuple[float, float] = (0.75, 1.3)
    shoulder_width_range: tuple[float, float] = (0.7, 1.4)
    neck_length_range: tuple[float, float] = (0.5, 1.6)
    face_scale_range: tuple[float, float] = (0.7, 1.6)
    arm_length_range: tuple[float, float] = (0.7, 1.3)
    leg_length_range: tuple[float, float] = (0.6, 1.3)
    symmetric: bool = True
    add_parts: tuple[str, ...] = tuple(PARTS)
    drop_parts: tuple[str, ...] = ("left_arm", "right_arm", "left_leg", "right_leg", "left_hand", "right_hand", "head")
    max_add_parts: int = 1
    max_drop_parts: int = 1
    at_least_one_op: bool = True

    def __post_init__(self) -> None:
        for op in OPS:
            prob = getattr(self, f"{op}_prob")
            if not 0.0 <= prob <= 1.0:
                raise ValueError(f"data.epi.rescale.{op}_prob must be in [0, 1], got {prob}")
        for range_name in ("body_length", "shoulder_width", "neck_length", "face_scale", "arm_length", "leg_length"):
            low, high = getattr(self, f"{range_name}_range")
            if not 0.0 < low <= high:
                raise ValueError(
                    f"data.epi.rescale.{range_name}_range must satisfy 0 < low <= high, got ({low}, {high})"
                )
        for kind in ("add", "drop"):
            unknown = sorted(set(getattr(self, f"{kind}_parts")) - set(PARTS))
            if unknown:
                raise ValueError(
                    f"data.epi.rescale.{kind}_parts: unknown part(s) {unknown}; known parts: {list(PARTS)}"
                )
            if getattr(self, f"max_{kind}_parts") < 1:
                raise ValueError(f"data.epi.rescale.max_{kind}_parts must be >= 1")

    @property
    def enabled_ops(self) -> tuple[str, ...]:
        return tuple(op for op in OPS if getattr(self, f"enable_{op}"))


@dataclass(frozen=True)
class RescalePlan:
    """One drawn combination, independent of the pose it will be applied to.

    Attributes:
        ops: the applied ops, in ``OPS`` order.
        bone_factors: ``(20,)`` length factor of every bone (1.0 = unchanged).
        face_scale: face-point scale about the nose.
        add_order: Add's preference order over ``add_parts``; the first ``num_add`` absent ones are grown.
        num_add: how many parts Add grows (0 when Add is off).
        drop_order: Drop's preference order over ``drop_parts``.
        num_drop: how many present parts Drop removes (0 when Drop is off).
    """

    ops: tuple[str, ...]
    bone_factors: np.ndarray = field(default_factory=lambda: np.ones(NUM_JOINTS))
    face_scale: float = 1.0
    add_order: tuple[str, ...] = ()
    num_add: int = 0
    drop_order: tuple[str, ...] = ()
    num_drop: int = 0


def sample_rescale_plan(rng: np.random.Generator, config: RescaleConfig) -> RescalePlan:
    """Draw one combination. Every value is drawn whether or not its op is enabled or chosen, so turning an op
    off (an ablation) does not change what the other ops draw for the same sample."""
    chosen = {op: bool(rng.random() < getattr(config, f"{op}_prob")) for op in OPS}
    fallback_pick = rng.random()
    sides = 1 if config.symmetric else 2

    def factors(value_range: tuple[float, float]) -> np.ndarray:
        drawn = rng.uniform(value_range[0], value_range[1], size=2)
        return np.repeat(drawn[:1], 2) if sides == 1 else drawn

    torso, shoulder = factors(config.body_length_range), factors(config.shoulder_width_range)
    neck, face = rng.uniform(*config.neck_length_range), rng.uniform(*config.face_scale_range)
    arm, leg = factors(config.arm_length_range), factors(config.leg_length_range)
    add_order = tuple(config.add_parts[i] for i in rng.permutation(len(config.add_parts)))
    drop_order = tuple(config.drop_parts[i] for i in rng.permutation(len(config.drop_parts)))
    num_add = int(rng.integers(1, config.max_add_parts + 1))
    num_drop = int(rng.integers(1, config.max_drop_parts + 1))

    enabled = config.enabled_ops
    ops = [op for op in enabled if chosen[op]]
    if not ops and enabled and config.at_least_one_op:
        ops = [enabled[min(int(fallback_pick * len(enabled)), len(enabled) - 1)]]
    bone_factors = np.ones(NUM_JOINTS)
    face_scale = 1.0
    if "bs" in ops:
        bone_factors[[BODY["right_hip"], BODY["left_hip"]]] = torso
        bone_factors[[BODY["right_shoulder"], BODY["left_shoulder"]]] = shoulder
    if "nf" in ops:
        bone_factors[BODY["nose"]] = neck
        bone_factors[[BODY["right_eye"], BODY["left_eye"], BODY["right_ear"], BODY["left_ear"]]] = face
        face_scale = float(face)
    if "al" in ops:
        bone_factors[[BODY["right_elbow"], BODY["right_wrist"]]] = arm[0]
        bone_factors[[BODY["left_elbow"], BODY["left_wrist"]]] = arm[1]
        bone_factors[[BODY["right_knee"], BODY["right_ankle"]]] = leg[0]
        bone_factors[[BODY["left_knee"], BODY["left_ankle"]]] = leg[1]
    return RescalePlan(
        ops=tuple(op for op in OPS if op in ops),
        bone_factors=bone_factors,
        face_scale=face_scale,
        add_order=add_order,
        num_add=num_add if "add" in ops else 0,
        drop_order=drop_order,
        num_drop=num_drop if "drop" in ops else 0,
    )


def apply_rescale_plan(
    pose: PoseSequence, plan: RescalePlan, anchor: PoseSequence | None, name: str = "pose"
) -> PoseSequence:
    """Apply a drawn combination: Add, then the bone scaling, then Drop.

    Args:
        pose: the (usually realigned) driving clip.
        plan: from ``sample_rescale_plan``.
        anchor: the anchor whose geometry Add grows parts from; required when ``plan.num_add > 0``.
        name: names the sample in error messages.
    """
    validate_pose(pose, name)
    if plan.num_add:
        if anchor is None:
            raise ValueError(f"{name}: the rescale plan grows parts (Add) but no anchor pose was given")
        validate_pose(anchor, f"{name} anchor")
        absent = [part for part in plan.add_order if _part_has_missing(pose, PARTS[part])]
        pose = _add_parts(pose, absent[: plan.num_add], anchor, name)
    if np.any(plan.bone_factors != 1.0) or plan.face_scale != 1.0:
        pose = _scale_bone_groups(pose, plan.bone_factors, plan.face_scale)
    if plan.num_drop:
        present = [part for part in plan.drop_order if _part_has_visible(pose, PARTS[part])]
        pose = _drop_parts(pose, present[: plan.num_drop], name)
    return pose


def _scale_bone_groups(pose: PoseSequence, bone_factors: np.ndarray, face_scale: float) -> PoseSequence:
    """Multiply bone lengths by ``bone_factors`` ``(20,)`` (and face size by ``face_scale``), neck fixed."""
    height, width = pose.frame_size
    pixels = PixelPose.from_pose(pose, (width, height))
    scaled = scale_bones(pixels, np.asarray(bone_factors, dtype=np.float64), float(face_scale))
    return scaled.to_pose(pose.frame_size, pose.face is not None)


def drop_parts(pose: PoseSequence, parts: list[str] | tuple[str, ...], name: str = "pose") -> PoseSequence:
    """Mark every point of the named parts missing in every frame."""
    validate_pose(pose, name)
    return _drop_parts(pose, parts, name)


def _drop_parts(pose: PoseSequence, parts: list[str] | tuple[str, ...], name: str) -> PoseSequence:
    body, feet, hands = pose.body.copy(), pose.feet.copy(), pose.hands.copy()
    face = None if pose.face is None else pose.face.copy()
    for part_name in parts:
        part = _part(part_name, name)
        for joint in part.joints:
            if joint < NUM_BODY:
                body[:, joint] = MISSING
            else:
                feet[:, joint - NUM_BODY] = MISSING
        for hand in part.hands:
            hands[:, hand] = MISSING
        if part.face and face is not None:
            face[:] = MISSING
    return PoseSequence(body=body, feet=feet, hands=hands, face=face, frame_size=pose.frame_size)


def add_parts(
    pose: PoseSequence, parts: list[str] | tuple[str, ...], anchor: PoseSequence, name: str = "pose"
) -> PoseSequence:
    """Grow the missing points of the named parts from the anchor's relative geometry; visible points stay.

    Per frame, a missing joint whose parent is present gets ``parent + anchor bone vector`` (the anchor brought to
    this frame's scale by the ratio of frame heights); a hand missing entirely gets the anchor's hand relative to
    its wrist, and a missing face the anchor's face relative to its nose. Points the anchor lacks stay missing.
    """
    validate_pose(pose, name)
    validate_pose(anchor, f"{name} anchor")
    return _add_parts(pose, parts, anchor, name)


def _add_parts(pose: PoseSequence, parts: list[str] | tuple[str, ...], anchor: PoseSequence, name: str) -> PoseSequence:
    height, width = pose.frame_size
    anc_h, anc_w = anchor.frame_size
    pixels = PixelPose.from_pose(pose, (width, height))
    target = PixelPose.from_pose(anchor.select([0]), (anc_w * height / anc_h, height))
    joints, shown = pixels.joints, pixels.joints_visible
    chosen = [_part(part_name, name) for part_name in parts]
    grow_joints = {joint for part in chosen for joint in part.joints}
    for joint in TOPOLOGICAL_ORDER[1:]:
        parent = JOINT_PARENT[joint]
        if joint not in grow_joints or not (target.joints_visible[0, joint] and target.joints_visible[0, parent]):
            continue
        fill = ~shown[:, joint] & shown[:, parent]
        joints[fill, joint] = joints[fill, parent] + (target.joints[0, joint] - target.joints[0, parent])
        shown[fill, joint] = True
    for hand in {hand for part in chosen for hand in part.hands}:
        wrist = HAND_WRIST[hand]
        if not target.joints_visible[0, wrist] or not target.hands_visible[0, hand].any():
            continue
        fill = ~pixels.hands_visible[:, hand].any(axis=1) & shown[:, wrist]
        offsets = target.hands[0, hand] - target.joints[0, wrist]
        pixels.hands[fill, hand] = joints[fill, wrist][:, None, :] + offsets
        pixels.hands_visible[fill, hand] = target.hands_visible[0, hand]
    if any(part.face for part in chosen) and target.joints_visible[0, FACE_ROOT] and target.face_visible[0].any():
        fill = ~pixels.face_visible.any(axis=1) & shown[:, FACE_ROOT]
        pixels.face[fill] = joints[fill, FACE_ROOT][:, None, :] + (target.face[0] - target.joints[0, FACE_ROOT])
        pixels.face_visible[fill] = target.face_visible[0]
    return pixels.to_pose(pose.frame_size, pose.face is not None)


def _part(part_name: str, name: str) -> Part:
    if part_name not in PARTS:
        raise ValueError(f"{name}: unknown body part {part_name!r}; known parts: {list(PARTS)}")
    return PARTS[part_name]


def _part_points(pose: PoseSequence, part: Part) -> list[np.ndarray]:
    joints = np.concatenate([pose.body, pose.feet], axis=1)
    points = [joints[:, list(part.joints)]] if part.joints else []
    points += [pose.hands[:, hand] for hand in part.hands]
    if part.face and pose.face is not None:
        points.append(pose.face)
    return points


def _part_has_missing(pose: PoseSequence, part: Part) -> bool:
    """Some point of the part is missing in some frame (a face counts only when the whole face is absent)."""
    joints = np.concatenate([pose.body, pose.feet], axis=1)
    if part.joints and np.any(np.all(joints[:, list(part.joints)] == MISSING, axis=-1)):
        return True
    if any(np.all(pose.hands[:, hand] == MISSING, axis=(-1, -2)).any() for hand in part.hands):
        return True
    return part.face and (pose.face is None or np.all(pose.face == MISSING, axis=(-1, -2)).any())


def _part_has_visible(pose: PoseSequence, part: Part) -> bool:
    return any(np.any(points != MISSING) for points in _part_points(pose, part))


__all__ = [
    "GROUP_BONES",
    "OPS",
    "PARTS",
    "Part",
    "RescaleConfig",
    "RescalePlan",
    "add_parts",
    "apply_rescale_plan",
    "drop_parts",
    "sample_rescale_plan",
]
