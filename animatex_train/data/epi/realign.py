"""Pose realignment (EPI step 3): keep a driving clip's motion, give it an anchor's body shape.

Paper section 3.3; how the official sources relate: ``docs/official_release.md`` §3.

The skeleton is the tree of the 19 drawn limbs over the 20 body-and-feet joints (OpenPose-18 + toes), rooted at
the neck. Every bone is named by its child joint. Hands hang from their wrists and the face from the nose.

Realignment follows the idea of UniAnimate's ``run_align_pose.py`` (reimplemented; docs/official_release.md §3):

1. Per-bone ratios = anchor bone length / driving bone length, the driving length measured on the first frame
   where both ends of that bone are visible. All 19 bones are covered (neck, torso, shoulders, arms, legs, head,
   feet), so the whole body takes the anchor's proportions.
2. Applied hierarchically from the neck outwards, identically on every frame: a joint is rebuilt as
   ``new_parent + ratio * (old_joint - old_parent)``, so each bone keeps its per-frame direction, gets the
   anchor's length, and all descendants (hands, toes, face) move with their parent.
3. Global scale: UniAnimate multiplies all coordinates by a shoulder-width (x) and torso-height (y) ratio before
   measuring bone ratios, so its bone ratios already absorb that scale; the only other thing the global scale
   changes is the neck's trajectory, and its anisotropy would also bend bone angles. We therefore fold the
   global scale into the bone ratios and apply ``(sx, sy)`` only to the neck's motion relative to the first
   frame, so a larger anchor travels proportionally further while bone lengths equal the anchor's exactly.
4. Translation: the neck of the first frame goes to the anchor's neck (same normalised position).

All geometry is in pixels so lengths and angles are aspect-correct; the result is renormalised, and points that
leave the frame are marked missing (the keypoint format allows no coordinates outside [0, 1]).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np

from animatex_train.data.format.keypoints import (
    BODY,
    MISSING,
    NUM_BODY,
    NUM_FACE,
    KeypointError,
    PoseSequence,
    visible,
)
from animatex_train.data.pose.skeleton import (
    ANCESTORS,
    BONES,
    FACE_ROOT,
    HAND_WRIST,
    HEAD_BONES,
    JOINT_PARENT,
    NUM_JOINTS,
    ROOT,
    TOPOLOGICAL_ORDER,
    validate_pose,
)


@dataclass
class PixelPose:
    """A pose in pixels of some frame, with explicit visibility (the working form of every EPI transform).

    Attributes:
        joints: ``(t, 20, 2)`` float64, body then feet (``JOINT_PARENT`` order).
        joints_visible: ``(t, 20)`` bool.
        hands: ``(t, 2, 21, 2)`` float64.
        hands_visible: ``(t, 2, 21)`` bool.
        face: ``(t, 68, 2)`` float64 (all invisible when the pose has no face).
        face_visible: ``(t, 68)`` bool.
    """

    joints: np.ndarray
    joints_visible: np.ndarray
    hands: np.ndarray
    hands_visible: np.ndarray
    face: np.ndarray
    face_visible: np.ndarray

    @classmethod
    def from_pose(cls, pose: PoseSequence, pixels_per_unit: tuple[float, float]) -> PixelPose:
        """Scale normalised coordinates by ``pixels_per_unit = (x_scale, y_scale)``."""
        scale = np.asarray(pixels_per_unit, dtype=np.float64)
        joints = np.concatenate([pose.body, pose.feet], axis=1)
        face = pose.face if pose.face is not None else np.full((pose.num_frames, NUM_FACE, 2), MISSING, np.float32)
        return cls(
            joints=joints.astype(np.float64) * scale,
            joints_visible=visible(joints),
            hands=pose.hands.astype(np.float64) * scale,
            hands_visible=visible(pose.hands),
            face=face.astype(np.float64) * scale,
            face_visible=visible(face),
        )

    def to_pose(self, frame_size: tuple[int, int], keep_face: bool) -> PoseSequence:
        """Renormalise to ``frame_size = (height, width)``; points outside the frame become missing."""
        scale = np.array([frame_size[1], frame_size[0]], dtype=np.float64)

        def normalise(points: np.ndarray, shown: np.ndarray) -> np.ndarray:
            out = (points / scale).astype(np.float32)
            inside = shown & (out[..., 0] >= 0) & (out[..., 0] <= 1) & (out[..., 1] >= 0) & (out[..., 1] <= 1)  # no NaN
            out[~inside] = MISSING
            return out

        joints = normalise(self.joints, self.joints_visible)
        face = normalise(self.face, self.face_visible)
        return PoseSequence(
            body=np.ascontiguousarray(joints[:, :NUM_BODY]),
            feet=np.ascontiguousarray(joints[:, NUM_BODY:]),
            hands=normalise(self.hands, self.hands_visible),
            face=face if keep_face or visible(face).any() else None,
            frame_size=(int(frame_size[0]), int(frame_size[1])),
        )


def bone_vectors(joints: np.ndarray) -> np.ndarray:
    """``(..., 20, 2)`` child minus parent for every joint (zero for the root)."""
    parents = np.array([max(p, 0) for p in JOINT_PARENT])
    vectors = joints - joints[..., parents, :]
    vectors[..., ROOT, :] = 0.0
    return vectors


def first_visible_bone_lengths(pose: PixelPose) -> np.ndarray:
    """``(20,)`` length of every bone on the first frame where both its ends are visible; NaN if never."""
    lengths = np.full(NUM_JOINTS, np.nan)
    norms = np.linalg.norm(bone_vectors(pose.joints), axis=-1)
    bones = np.array(BONES)  # vectorised over bones: the loop was a tenth of the loader's EPI time
    both = pose.joints_visible[:, bones] & pose.joints_visible[:, np.array(JOINT_PARENT)[bones]]  # (t, bones)
    seen = both.any(axis=0)
    lengths[bones[seen]] = norms[np.argmax(both, axis=0)[seen], bones[seen]]
    return lengths


def interpolated_root(pose: PixelPose) -> np.ndarray | None:
    """``(t, 2)`` the neck per frame, linearly interpolated over frames where it is missing; None if never seen."""
    shown = pose.joints_visible[:, ROOT]
    if not shown.any():
        return None
    frames = np.arange(len(shown))
    neck = pose.joints[:, ROOT]
    return np.stack([np.interp(frames, frames[shown], neck[shown, axis]) for axis in range(2)], axis=-1)


def scale_bones(
    pose: PixelPose,
    ratios: np.ndarray,
    face_scale: float,
    root_positions: np.ndarray | None = None,
    bone_lengths: np.ndarray | None = None,
) -> PixelPose:
    """Multiply every bone by its ratio, hierarchically from the neck, on every frame.

    A visible joint is rebuilt from its nearest visible ancestor ``a`` as ``new[a] + r * (old[joint] - old[a])``.
    With the parent visible, ``r`` is the bone's own ratio, so the bone keeps its direction exactly. When
    intermediate joints are missing, ``r`` is the chain's ratio weighted by ``bone_lengths`` (exact for a straight
    chain). A missing neck is interpolated over time and used only as the tree's root, never output. Hands move
    rigidly with their wrist; face points are scaled by ``face_scale`` about the nose. Wrists or a nose missing
    while their hand or face is visible are stood in for by the hand's wrist point (or centroid) and the face
    centroid, again only as attachment points.

    Args:
        pose: the pose in pixels.
        ratios: ``(20,)`` length ratio of bone ``c`` (parent(c) -> c); the root's entry is ignored.
        face_scale: scale of face points about the nose.
        root_positions: ``(t, 2)`` new neck position per frame; default: the neck stays where it is.
        bone_lengths: ``(20,)`` reference lengths weighting chain ratios (NaN = unknown, equal weights then).

    Returns:
        The rescaled pose with the same visibility. If the neck is missing in every frame, the pose is returned
        unchanged (there is no root to grow the tree from).
    """
    old_root = interpolated_root(pose)
    if old_root is None:
        return pose
    new_root = old_root if root_positions is None else np.asarray(root_positions, dtype=np.float64)
    old = pose.joints.copy()
    usable = pose.joints_visible.copy()
    old[:, ROOT], usable[:, ROOT] = old_root, True
    for hand, wrist in enumerate(HAND_WRIST):
        shown = pose.hands_visible[:, hand]
        stand_in = ~usable[:, wrist] & shown.any(axis=1)
        if stand_in.any():
            centroid = (pose.hands[:, hand] * shown[..., None]).sum(1) / np.maximum(shown.sum(1), 1)[:, None]
            wrist_point = np.where(shown[:, :1], pose.hands[:, hand, 0], centroid)
            old[stand_in, wrist], usable[stand_in, wrist] = wrist_point[stand_in], True
    face_shown = pose.face_visible
    stand_in = ~usable[:, FACE_ROOT] & face_shown.any(axis=1)
    if stand_in.any():
        centroid = (pose.face * face_shown[..., None]).sum(1) / np.maximum(face_shown.sum(1), 1)[:, None]
        old[stand_in, FACE_ROOT], usable[stand_in, FACE_ROOT] = centroid[stand_in], True

    new = np.zeros_like(old)
    new[:, ROOT] = new_root
    for joint in TOPOLOGICAL_ORDER[1:]:
        todo = usable[:, joint].copy()
        chain = [joint]
        for ancestor in ANCESTORS[joint]:
            if not todo.any():
                break
            here = todo & usable[:, ancestor]
            if here.any():
                ratio = _chain_ratio(ratios, chain, bone_lengths)
                new[here, joint] = new[here, ancestor] + ratio * (old[here, joint] - old[here, ancestor])
                todo &= ~here
            chain.append(ancestor)

    hands = pose.hands.copy()
    for hand, wrist in enumerate(HAND_WRIST):
        shift = np.where(usable[:, wrist, None], new[:, wrist] - old[:, wrist], 0.0)
        hands[:, hand] += shift[:, None, :]
    face = new[:, FACE_ROOT, None] + face_scale * (pose.face - old[:, FACE_ROOT, None])
    return PixelPose(
        joints=np.where(pose.joints_visible[..., None], new, pose.joints),
        joints_visible=pose.joints_visible.copy(),
        hands=hands,
        hands_visible=pose.hands_visible.copy(),
        face=np.where(face_shown[..., None], face, pose.face),
        face_visible=face_shown.copy(),
    )


def _chain_ratio(ratios: np.ndarray, chain: list[int], weights: np.ndarray | None) -> float:
    """Ratio of a chain of bones (named by child joints): length-weighted when all lengths are known."""
    values = ratios[chain]
    if weights is not None and np.isfinite(weights[chain]).all() and weights[chain].sum() > 0:
        return float((values * weights[chain]).sum() / weights[chain].sum())
    return float(values.mean())


@dataclass(frozen=True)
class RealignConfig:
    """How a driving clip is realigned to an anchor.

    Attributes:
        scale_root_motion: scale the neck's motion (relative to the first frame) by the anchor/driving
            shoulder-width (x) and torso-height (y) ratios, as UniAnimate's global scale does.
        max_bone_ratio: ratios are clipped to ``[1 / max_bone_ratio, max_bone_ratio]``; a bone foreshortened
            on the measured frame would otherwise blow up on every frame.
        min_bone_length_px: shorter bones (on the measured frame or the anchor) are not measured; they take the
            median of the measured ratios instead.
    """

    scale_root_motion: bool = True
    max_bone_ratio: float = 4.0
    min_bone_length_px: float = 2.0

    def __post_init__(self) -> None:
        if not self.max_bone_ratio >= 1.0:
            raise ValueError(f"data.epi.realign.max_bone_ratio must be >= 1, got {self.max_bone_ratio}")
        if not self.min_bone_length_px > 0.0:
            raise ValueError(f"data.epi.realign.min_bone_length_px must be > 0, got {self.min_bone_length_px}")


def realign_to_anchor(
    driving: PoseSequence,
    anchor: PoseSequence,
    config: RealignConfig | None = None,
    output_frame_size: tuple[int, int] | None = None,
    name: str = "driving pose",
) -> PoseSequence:
    """Give ``driving`` the body shape of ``anchor`` (its first frame) while keeping the driving motion.

    Args:
        driving: the driving clip, ``t`` frames.
        anchor: the anchor pose; only frame 0 is used. Its neck must be visible.
        config: realignment settings.
        output_frame_size: ``(height, width)`` of the output's frame; default ``driving.frame_size``. The driving
            and anchor geometry are brought to it by a uniform scale of the frame heights, and the neck is
            placed at the anchor's normalised neck position.
        name: names the sample in error messages.

    Returns:
        The realigned clip in ``output_frame_size``. A clip whose neck is never visible cannot be realigned and
        is returned with its normalised coordinates unchanged.

    Raises:
        KeypointError: bad keypoints, or an anchor without a visible neck.
    """
    config = config or RealignConfig()
    validate_pose(driving, name)
    validate_pose(anchor, f"{name} anchor")
    out_h, out_w = output_frame_size or driving.frame_size
    if not visible(anchor.body[0, ROOT]):
        raise KeypointError(f"{name} anchor: the neck must be visible to realign to it; pick an anchor with a neck")
    drv_h, drv_w = driving.frame_size
    anc_h, anc_w = anchor.frame_size
    pose = PixelPose.from_pose(driving, (drv_w * out_h / drv_h, out_h))
    target = PixelPose.from_pose(anchor.select([0]), (anc_w * out_h / anc_h, out_h))
    root = interpolated_root(pose)
    if root is None:
        return PixelPose.from_pose(driving, (out_w, out_h)).to_pose((out_h, out_w), driving.face is not None)

    driving_lengths = first_visible_bone_lengths(pose)
    anchor_lengths = first_visible_bone_lengths(target)
    measured = (driving_lengths >= config.min_bone_length_px) & (anchor_lengths >= config.min_bone_length_px)
    ratios = np.ones(NUM_JOINTS)
    ratios[measured] = anchor_lengths[measured] / driving_lengths[measured]
    ratios = np.clip(ratios, 1.0 / config.max_bone_ratio, config.max_bone_ratio)
    # Bones that cannot be measured take the body's typical ratio, so unmeasured parts keep proportion.
    fallback = float(statistics.median(ratios[measured].tolist())) if measured.any() else 1.0  # = np.median, faster
    ratios[~measured] = fallback
    head = [bone for bone in HEAD_BONES if measured[bone]]
    face_scale = float(ratios[head].mean()) if head else fallback

    first = int(np.argmax(pose.joints_visible[:, ROOT]))
    motion_scale = np.ones(2)
    if config.scale_root_motion:
        motion_scale = _root_motion_scale(pose, target, config, fallback)
    anchor_neck = anchor.body[0, ROOT].astype(np.float64) * np.array([out_w, out_h])
    new_root = anchor_neck + motion_scale * (root - root[first])
    realigned = scale_bones(pose, ratios, face_scale, root_positions=new_root, bone_lengths=driving_lengths)
    return realigned.to_pose((out_h, out_w), driving.face is not None)


def _root_motion_scale(pose: PixelPose, target: PixelPose, config: RealignConfig, fallback: float) -> np.ndarray:
    """``(sx, sy)``: anchor/driving shoulder width and torso height, each measured on its first complete frame."""
    shoulders = (BODY["right_shoulder"], BODY["left_shoulder"])
    hips = (BODY["right_hip"], BODY["left_hip"])

    def width(p: PixelPose) -> float:
        ok = p.joints_visible[:, shoulders].all(axis=1)
        if not ok.any():
            return np.nan
        f = int(np.argmax(ok))
        return float(np.linalg.norm(p.joints[f, shoulders[0]] - p.joints[f, shoulders[1]]))

    def torso(p: PixelPose) -> float:
        ok = p.joints_visible[:, shoulders + hips].all(axis=1)
        if not ok.any():
            return np.nan
        f = int(np.argmax(ok))
        top = p.joints[f, list(shoulders)].mean(axis=0)
        bottom = p.joints[f, list(hips)].mean(axis=0)
        return float(np.linalg.norm(top - bottom))

    scales = []
    for measure in (width, torso):
        ours, theirs = measure(pose), measure(target)
        good = ours >= config.min_bone_length_px and theirs >= config.min_bone_length_px
        scales.append(theirs / ours if good else np.nan)
    sx, sy = scales
    sx = sy if np.isnan(sx) else sx
    sy = sx if np.isnan(sy) else sy
    result = np.array([fallback, fallback]) if np.isnan(sx) else np.array([sx, sy])
    return np.clip(result, 1.0 / config.max_bone_ratio, config.max_bone_ratio)


__all__ = [
    "PixelPose",
    "RealignConfig",
    "bone_vectors",
    "first_visible_bone_lengths",
    "interpolated_root",
    "realign_to_anchor",
    "scale_bones",
]
