"""Per-bone pose alignment (docs/inference.md): UniAnimate's ``run_align_pose`` and MusePose's
``align_img``, reimplemented on the project's skeleton (``data/epi/realign.py``) with NaN/inf guards.

Both methods measure bone-length ratios reference / driving on one driving frame (the align frame), rescale every
bone of every frame about its parent in kinematic order (children move with their parent), and put the align
frame's neck on the reference's neck. They differ in the units and in which ratios they measure:

* UniAnimate first scales all driving points by a global anisotropic ``(sx, sy)`` (shoulder width, torso
  height, in normalised coordinates), then takes one ratio per bone for 15 bones (neck, shoulders, arms, head,
  legs); hip bones and toes keep their globally scaled length.
* MusePose works in aspect-correct units (both frames resized to the same height) and takes 9 scales, arms and
  legs averaged over left and right, hands scaled about their wrists.

Deliberate departures from the sources, all guards or generalisations:

* Lengths are measured in pixels of the reference frame. UniAnimate measures them in normalised coordinates,
  which for a non-square frame makes a bone's ratio depend on its direction; MusePose already uses pixels.
* UniAnimate's ``sx`` is taken as an absolute value (a reference facing away would otherwise mirror the motion);
  a scale that cannot be measured takes the other one, and 1 if neither can.
* A ratio that cannot be measured is *guarded* (reported by name, never inf or NaN): both lengths under
  ``MIN_LENGTH_PX`` (0/0, MusePose's NaN) -> 1; otherwise (driving length under a pixel, MusePose's inf; a
  joint missing on either side, where the sources compute a garbage length from the (-1, -1) placeholder; a
  collapsed reference bone, where the sources give 0) -> the mean of the measured ratios (MusePose's inf rule),
  or 1 if none was measured. One method, one rule, for both.
* A missing joint stays missing. Its visible descendants hang from the nearest visible ancestor with the
  length-weighted chain ratio, and a missing neck is interpolated over time as the tree's root
  (``pose_realign.scale_bones``).
* Feet (toe midpoints) move rigidly with their ankle (UniAnimate carries them with the leg; MusePose has none).
* Face points follow the sources: only the global steps (UniAnimate: global scale and translation; MusePose:
  translation, "face deliberately not aligned", MusePose#42). The face is not drawn and not an IPI input.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from animatex_train.data.epi.realign import PixelPose, first_visible_bone_lengths, interpolated_root, scale_bones
from animatex_train.data.format.keypoints import BODY, BODY_NAMES, KeypointError, PoseSequence
from animatex_train.data.pose.skeleton import HAND_WRIST, JOINT_PARENT, NUM_JOINTS, ROOT

BoneMode = Literal["unianimate", "musepose"]
MIN_LENGTH_PX = 1.0  # shorter than a pixel: the two joints coincide and the length cannot be measured
_NAMES = BODY_NAMES + ("left_toes", "right_toes")
# UniAnimate run_align_pose: the bones it rescales, each named by its child joint (parent = JOINT_PARENT).
UNIANIMATE_BONES: tuple[int, ...] = tuple(
    BODY[name]
    for name in (
        "nose",
        "right_shoulder",
        "left_shoulder",
        "right_elbow",
        "right_wrist",
        "left_elbow",
        "left_wrist",
        "right_eye",
        "left_eye",
        "right_ear",
        "left_ear",
        "right_knee",
        "right_ankle",
        "left_knee",
        "left_ankle",
    )
)
_HIPS = (BODY["right_hip"], BODY["left_hip"])
_SHOULDERS = (BODY["right_shoulder"], BODY["left_shoulder"])
# MusePose align_img: each scale -> the segments it averages (a joint, or a tuple of joints = their midpoint).
MUSEPOSE_SCALES: dict[str, tuple[tuple[int | tuple[int, ...], int | tuple[int, ...]], ...]] = {
    "neck": ((BODY["nose"], ROOT),),
    "face": ((BODY["right_ear"], BODY["left_ear"]),),
    "shoulder": (_SHOULDERS,),
    "arm_upper": ((BODY["right_shoulder"], BODY["right_elbow"]), (BODY["left_shoulder"], BODY["left_elbow"])),
    "arm_lower": ((BODY["right_elbow"], BODY["right_wrist"]), (BODY["left_elbow"], BODY["left_wrist"])),
    "body_len": ((ROOT, _HIPS),),
    "leg_upper": ((BODY["right_hip"], BODY["right_knee"]), (BODY["left_hip"], BODY["left_knee"])),
    "leg_lower": ((BODY["right_knee"], BODY["right_ankle"]), (BODY["left_knee"], BODY["left_ankle"])),
}
# Which scale multiplies each joint's bone (parent -> joint) in the hierarchical rescale; toes are rigid.
_MUSEPOSE_BONE_SCALE: dict[int, str] = {
    BODY["nose"]: "neck",
    **{BODY[n]: "face" for n in ("right_eye", "left_eye", "right_ear", "left_ear")},
    **{j: "shoulder" for j in _SHOULDERS},
    **{j: "body_len" for j in _HIPS},
    BODY["right_elbow"]: "arm_upper",
    BODY["left_elbow"]: "arm_upper",
    BODY["right_wrist"]: "arm_lower",
    BODY["left_wrist"]: "arm_lower",
    BODY["right_knee"]: "leg_upper",
    BODY["left_knee"]: "leg_upper",
    BODY["right_ankle"]: "leg_lower",
    BODY["left_ankle"]: "leg_lower",
}
_PALM_RAYS = (1, 5, 9, 13, 17)  # MusePose's hand scale: wrist (hand point 0) to each finger's base


@dataclass
class BoneFit:
    """What a per-bone alignment measured and applied (goes to the alignment report).

    Attributes:
        scales: the ratios applied, by name (UniAnimate: one per bone "parent->child"; MusePose: its 9 scales).
        guarded: name -> why it could not be measured and what it fell back to.
        global_scale: UniAnimate's ``(sx, sy)``; None for MusePose.
        translation_px: the shift that puts the align frame's neck on the reference's, in reference pixels.
    """

    scales: dict[str, float] = field(default_factory=dict)
    guarded: dict[str, str] = field(default_factory=dict)
    global_scale: tuple[float, float] | None = None
    translation_px: tuple[float, float] = (0.0, 0.0)


def align_bones(
    driving: PoseSequence, ref: PoseSequence, mode: BoneMode, align_frame: int
) -> tuple[PixelPose, BoneFit]:
    """Align ``driving`` to ``ref`` (frame 0) by per-bone ratios measured on ``driving`` frame ``align_frame``.

    Args:
        driving: the driving keypoints (their ``frame_size`` is the video's).
        ref: the reference keypoints; frame 0 is used and its neck must be visible.
        mode: ``"unianimate"`` or ``"musepose"`` (module docstring).
        align_frame: the driving frame the ratios and the translation are measured on.

    Returns:
        The aligned pose in pixels of the reference frame, and what was measured.

    Raises:
        KeypointError: the reference neck is missing or the driving neck is never visible (``fallback_mode``
            checks both before this is called).
    """
    ref_h, ref_w = ref.frame_size
    ref_px = PixelPose.from_pose(ref.select([0]), (ref_w, ref_h))
    fit = BoneFit()
    if mode == "unianimate":
        sx, sy = _unianimate_global_scale(driving, ref, align_frame, fit)
        fit.global_scale = (sx, sy)
        pose = PixelPose.from_pose(driving, (sx * ref_w, sy * ref_h))
        ratios = _unianimate_ratios(pose, ref_px, align_frame, fit)
        hand_scale = 1.0  # UniAnimate moves each hand rigidly with its arm
    else:
        drv_h, drv_w = driving.frame_size
        pose = PixelPose.from_pose(driving, (drv_w / drv_h * ref_h, ref_h))  # same height, own aspect (MusePose)
        ratios, hand_scale = _musepose_ratios(pose, ref_px, align_frame, fit)
    return _rescale(pose, ref_px, ratios, hand_scale, align_frame, fit), fit


def _point(pose: PixelPose, frame: int, spec: int | tuple[int, ...]) -> np.ndarray | None:
    joints = (spec,) if isinstance(spec, int) else spec
    if not all(pose.joints_visible[frame, j] for j in joints):
        return None
    return pose.joints[frame, list(joints)].mean(axis=0)


def _length(pose: PixelPose, frame: int, a: int | tuple[int, ...], c: int | tuple[int, ...]) -> float | None:
    pa, pc = _point(pose, frame, a), _point(pose, frame, c)
    return None if pa is None or pc is None else float(np.linalg.norm(pc - pa))


def _ratio(ref_len: float | None, drv_len: float | None) -> tuple[float | None, str]:
    """``ref / drv`` when measurable, else None and the reason (``_resolve`` picks the fallback from it)."""
    if ref_len is None:
        return None, "a joint is missing in the reference"
    if drv_len is None:
        return None, "a joint is missing on the align frame"
    if drv_len < MIN_LENGTH_PX:
        if ref_len < MIN_LENGTH_PX:
            return None, "0/0: the joints coincide in both poses"
        return None, "the joints coincide on the align frame (the ratio would be inf)"
    if ref_len < MIN_LENGTH_PX:
        return None, "the joints coincide in the reference (the ratio would be 0)"
    return ref_len / drv_len, ""


def _resolve(measured: dict[str, float], reasons: dict[str, str], fit: BoneFit) -> dict[str, float]:
    """Fill every unmeasured ratio: 0/0 -> 1 (MusePose NaN -> 1), else the mean of the measured (inf -> mean)."""
    mean = float(np.mean(list(measured.values()))) if measured else 1.0
    resolved = dict(measured)
    for name, reason in reasons.items():
        value = 1.0 if reason.startswith("0/0") else mean
        resolved[name] = value
        fit.guarded[name] = f"{reason}; uses {value:.4g}"
    fit.scales.update(resolved)
    return resolved


def _unianimate_global_scale(driving: PoseSequence, ref: PoseSequence, frame: int, fit: BoneFit) -> tuple[float, float]:
    """UniAnimate step 1: ``sx`` = shoulder-width ratio, ``sy`` = torso-height ratio, in normalised units."""
    (ref_h, ref_w), (drv_h, drv_w) = ref.frame_size, driving.frame_size
    right, left = _SHOULDERS

    def extents(body: np.ndarray, shown: np.ndarray) -> tuple[float | None, float | None]:
        width = abs(body[left, 0] - body[right, 0]) if shown[[right, left]].all() else None
        height = None
        if shown[[right, left, *_HIPS]].all():
            height = abs(body[list(_HIPS), 1].mean() - body[[right, left], 1].mean())
        return width, height

    ref_wd, ref_ht = extents(ref.body[0].astype(np.float64), ref.body_visible[0])
    drv_wd, drv_ht = extents(driving.body[frame].astype(np.float64), driving.body_visible[frame])
    # Pixel lengths decide whether each is measurable; the ratio itself is UniAnimate's, in normalised units.
    sx, why_x = _ratio(None if ref_wd is None else ref_wd * ref_w, None if drv_wd is None else drv_wd * drv_w)
    sy, why_y = _ratio(None if ref_ht is None else ref_ht * ref_h, None if drv_ht is None else drv_ht * drv_h)
    sx = None if sx is None else sx * drv_w / ref_w
    sy = None if sy is None else sy * drv_h / ref_h
    if sx is None:
        fit.guarded["global_sx"] = f"shoulder width: {why_x}; uses {sy if sy is not None else 1.0:.4g} (sy or 1)"
    if sy is None:
        fit.guarded["global_sy"] = f"torso height: {why_y}; uses {sx if sx is not None else 1.0:.4g} (sx or 1)"
    sx, sy = (sx if sx is not None else sy), (sy if sy is not None else sx)
    return (1.0, 1.0) if sx is None or sy is None else (float(sx), float(sy))


def _bone_name(joint: int) -> str:
    return f"{_NAMES[JOINT_PARENT[joint]]}->{_NAMES[joint]}"


def _unianimate_ratios(pose: PixelPose, ref_px: PixelPose, frame: int, fit: BoneFit) -> np.ndarray:
    """UniAnimate step 2: one ratio per bone on the globally scaled align frame; other bones keep 1."""
    measured, reasons = {}, {}
    for joint in UNIANIMATE_BONES:
        parent = JOINT_PARENT[joint]
        value, why = _ratio(_length(ref_px, 0, parent, joint), _length(pose, frame, parent, joint))
        if value is None:
            reasons[_bone_name(joint)] = why
        else:
            measured[_bone_name(joint)] = value
    resolved = _resolve(measured, reasons, fit)
    ratios = np.ones(NUM_JOINTS)
    for joint in UNIANIMATE_BONES:
        ratios[joint] = resolved[_bone_name(joint)]
    return ratios


def _musepose_ratios(pose: PixelPose, ref_px: PixelPose, frame: int, fit: BoneFit) -> tuple[np.ndarray, float]:
    """MusePose's 9 scales (L/R averaged over the measurable sides) -> per-joint ratios and the hand scale."""
    measured, reasons = {}, {}
    for name, segments in MUSEPOSE_SCALES.items():
        values, whys = [], []
        for a, c in segments:
            value, why = _ratio(_length(ref_px, 0, a, c), _length(pose, frame, a, c))
            if value is None:
                whys.append(why)
            else:
                values.append(value)
        if values:
            measured[name] = float(np.mean(values))
        else:  # 0/0 only when every side is 0/0; any other failure is an inf-like one
            inf_like = [why for why in whys if not why.startswith("0/0")]
            reasons[name] = inf_like[0] if inf_like else whys[0]
    scales = _resolve(measured, reasons, fit)
    # Hand: the mean of the measurable palm-ray ratios, averaged with both arm scales (MusePose; the arms alone
    # when no ray can be measured). MusePose skips only rays of zero driving length; we also skip missing points.
    rays = []
    for hand in range(2):
        for tip in _PALM_RAYS:
            ends = (0, tip)
            if ref_px.hands_visible[0, hand, list(ends)].all() and pose.hands_visible[frame, hand, list(ends)].all():
                ref_len = float(np.linalg.norm(np.subtract(*ref_px.hands[0, hand, list(ends)])))
                drv_len = float(np.linalg.norm(np.subtract(*pose.hands[frame, hand, list(ends)])))
                value, _ = _ratio(ref_len, drv_len)
                if value is not None:
                    rays.append(value)
    arms = [scales["arm_upper"], scales["arm_lower"]]
    hand_scale = float(np.mean([np.mean(rays), *arms]) if rays else np.mean(arms))
    fit.scales["hand"] = hand_scale
    ratios = np.ones(NUM_JOINTS)
    for joint, name in _MUSEPOSE_BONE_SCALE.items():
        ratios[joint] = scales[name]
    return ratios, hand_scale


def _scale_hands(pose: PixelPose, scale: float) -> PixelPose:
    """Scale each hand about its wrist (the body wrist, else hand point 0, else the hand's centroid)."""
    hands = pose.hands.copy()
    for hand, wrist in enumerate(HAND_WRIST):
        shown = pose.hands_visible[:, hand]
        centroid = (pose.hands[:, hand] * shown[..., None]).sum(1) / np.maximum(shown.sum(1), 1)[:, None]
        pivot = np.where(shown[:, :1], pose.hands[:, hand, 0], centroid)
        pivot = np.where(pose.joints_visible[:, wrist, None], pose.joints[:, wrist], pivot)
        scaled = pivot[:, None] + scale * (pose.hands[:, hand] - pivot[:, None])
        hands[:, hand] = np.where(shown[..., None], scaled, pose.hands[:, hand])
    return replace(pose, hands=hands)


def _rescale(
    pose: PixelPose, ref_px: PixelPose, ratios: np.ndarray, hand_scale: float, frame: int, fit: BoneFit
) -> PixelPose:
    """Steps 3-4: rescale every bone about its parent on every frame, then put the align frame's neck on the ref's."""
    if not ref_px.joints_visible[0, ROOT]:
        raise KeypointError("--align: the reference neck is missing; pass --ref_keypoints or use --align linear/none")
    root = interpolated_root(pose)  # (t, 2); a frame without a neck takes the interpolated one as the tree's root
    if root is None:
        raise KeypointError("--align: the driving neck is never visible, so the clip cannot be aligned at the neck")
    shift = ref_px.joints[0, ROOT] - root[frame]
    fit.translation_px = (float(shift[0]), float(shift[1]))
    if hand_scale != 1.0:
        pose = _scale_hands(pose, hand_scale)
    out = scale_bones(
        pose, ratios, face_scale=1.0, root_positions=root + shift, bone_lengths=first_visible_bone_lengths(pose)
    )
    out.face = np.where(pose.face_visible[..., None], pose.face + shift, pose.face)  # face: translation only
    return out
