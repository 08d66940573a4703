"""Driving-pose alignment to the reference character for ``animate --align`` (docs/inference.md).

Animate-X's official inference draws the driving poses as detected (README: align them by hand). ``align_poses``
offers the three alignments users reach for, then an optional manual scale and offset:

* ``none``: the driving keypoints unchanged (official); their normalised coordinates are drawn stretched onto the
  reference frame, as the official pipeline stretches every pose image.
* ``unianimate``: UniAnimate ``run_align_pose`` (global anisotropic scale, per-bone ratios, neck translation).
* ``musepose``: MusePose ``align_img`` (aspect-correct units, 9 L/R-averaged scales, hierarchical rescale).
* ``linear``: MimicMotion ``get_video_pose``: one least-squares linear map for the whole clip, isotropic in pixels.
  It retargets no limb proportions and ignores ``--align_frame``; since it fits all frames at once it is the
  identity (for a reference equal to driving frame 0) only on a still clip.

The per-bone methods live in ``align_bones.py`` (with their guards). Everything is aligned (body, feet, hands,
face) the way each source method treats it, and the result is expressed in the reference's frame. A point that
leaves the frame becomes missing, as the keypoint format requires (counted in the report). When the reference
pose is too thin for the chosen method (a non-human character the detector misses), ``fallback_mode`` picks
``linear`` or ``none`` and says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import numpy as np

from animatex_train.data.epi.realign import PixelPose
from animatex_train.data.format.keypoints import BODY, PoseSequence, visible
from animatex_train.data.pose.skeleton import ROOT, validate_pose
from animatex_train.inference.align_bones import MIN_LENGTH_PX, align_bones
from animatex_train.inference.align_preview import preview_alignment

AlignMode = Literal["none", "unianimate", "musepose", "linear"]
ALIGN_MODES: tuple[str, ...] = ("none", "unianimate", "musepose", "linear")
# The per-bone methods need the reference neck and this many visible body points (of 18) in the reference.
MIN_REF_BODY_POINTS = 5
# MimicMotion get_video_pose: the reference joints the linear map is fitted on (no elbows or wrists).
LINEAR_JOINTS: tuple[int, ...] = tuple(BODY[n] for n in ("nose", "neck", "right_shoulder", "left_shoulder")) + tuple(
    range(BODY["right_hip"], 18)
)


@dataclass
class AlignmentReport:
    """What ``align_poses`` did, for ``meta.json`` (``to_dict``).

    Attributes:
        requested_mode: the ``--align`` asked for.
        mode: the mode used (differs after a fallback, see ``warnings``).
        align_frame: the driving frame the per-bone ratios and the translation were measured on.
        global_scale: UniAnimate's ``(sx, sy)``.
        scales: the ratios applied, by name (per bone for UniAnimate, the 9 scales + hand for MusePose).
        guarded: scales that could not be measured -> the reason and the fallback value used.
        translation: the neck shift, in normalised units of the output (reference) frame.
        linear: MimicMotion's ``{"ax", "bx", "ay", "by", "num_pairs"}`` (normalised coordinates).
        manual_scale, manual_offset, pivot: the ``--pose_scale`` / ``--pose_offset`` applied, about ``pivot``
            (normalised output coordinates).
        points_outside_frame: visible points the alignment moved out of the frame (now missing).
        warnings: messages for the user (fallbacks).
    """

    requested_mode: str
    mode: str
    align_frame: int
    global_scale: tuple[float, float] | None = None
    scales: dict[str, float] = field(default_factory=dict)
    guarded: dict[str, str] = field(default_factory=dict)
    translation: tuple[float, float] | None = None
    linear: dict[str, float] | None = None
    manual_scale: tuple[float, float] | None = None
    manual_offset: tuple[float, float] | None = None
    pivot: tuple[float, float] | None = None
    points_outside_frame: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class LinearFit:
    """MimicMotion's map ``x' = ax x + bx``, ``y' = ay y + by`` in normalised coordinates (driving -> reference)."""

    ax: float
    bx: float
    ay: float
    by: float
    num_pairs: int


def fit_linear(ref: PoseSequence, driving: PoseSequence) -> LinearFit | None:
    """Fit MimicMotion's global linear map, or None when the pairs cannot determine it.

    Pairs are (driving joint on frame i, the same reference joint) for every frame and every ``LINEAR_JOINTS``
    joint visible in the reference. ``y_ref = ay y_drv + by`` by least squares (``np.polyfit`` degree 1 in the
    source); ``ax = ay (W_drv / H_drv) (H_ref / W_ref)`` makes the map isotropic in pixels, and ``bx`` is the
    mean x residual. Unlike the source, a joint missing on a driving frame is left out of the fit (MimicMotion
    fits its (-1, -1) placeholders too). None when fewer than two such joints are visible in the reference, the
    driving y values of the pairs span less than a pixel, or the slope is not positive and finite.
    """
    ref_shown = ref.body_visible[0]
    joints = [j for j in LINEAR_JOINTS if ref_shown[j]]
    if len(joints) < 2:
        return None
    shown = driving.body_visible[:, joints]  # (t, J)
    drv = driving.body[:, joints].astype(np.float64)[shown]  # (pairs, 2)
    target = np.broadcast_to(ref.body[0, joints].astype(np.float64), (driving.num_frames, len(joints), 2))[shown]
    (ref_h, ref_w), (drv_h, drv_w) = ref.frame_size, driving.frame_size
    if len(drv) < 2 or (drv[:, 1].max() - drv[:, 1].min()) * drv_h < MIN_LENGTH_PX:
        return None
    y, y_ref = drv[:, 1], target[:, 1]
    ay = float(((y - y.mean()) * (y_ref - y_ref.mean())).sum() / ((y - y.mean()) ** 2).sum())
    if not np.isfinite(ay) or ay <= 0.0:
        return None
    by = float(y_ref.mean() - ay * y.mean())
    ax = ay * (drv_w / drv_h) * (ref_h / ref_w)
    bx = float(np.mean(target[:, 0] - ax * drv[:, 0]))
    return LinearFit(ax=ax, bx=bx, ay=ay, by=by, num_pairs=len(drv))


def fallback_mode(ref: PoseSequence | None, driving: PoseSequence, mode: AlignMode) -> tuple[AlignMode, str | None]:
    """The mode ``align_poses`` can actually run, and a warning when it is not ``mode``.

    ``unianimate``/``musepose`` need the reference neck, at least ``MIN_REF_BODY_POINTS`` visible reference body
    points, and a driving neck on some frame. ``linear`` needs a determinable ``fit_linear``. A mode that cannot
    run falls back to ``linear`` when that can, else to ``none`` (e.g. a non-human reference the detector misses).
    """
    if mode == "none":
        return mode, None
    reason = None
    if ref is None:
        reason = "no reference pose was given"
    elif mode in ("unianimate", "musepose"):
        count = int(ref.body_visible[0].sum())
        if not ref.body_visible[0, ROOT] or count < MIN_REF_BODY_POINTS:
            reason = (
                f"the reference pose shows {count} of 18 body points (needs the neck and at least "
                f"{MIN_REF_BODY_POINTS})"
            )
        elif not driving.body_visible[:, ROOT].any():
            reason = "the driving neck is never visible"
    if reason is None and mode != "linear":
        return mode, None
    linear_ok = ref is not None and fit_linear(ref, driving) is not None
    if reason is None and linear_ok:
        return mode, None
    if reason is None:
        reason = "the reference and driving joints cannot determine a linear map"
    used: AlignMode = "linear" if linear_ok and mode != "linear" else "none"
    return used, (
        f"--align {mode}: {reason}; using --align {used} instead. For a character the pose detector misses, pass "
        "its keypoints with --ref_keypoints FILE, or choose --align none or --pose_scale/--pose_offset by hand."
    )


def align_poses(
    ref: PoseSequence | None,
    driving: PoseSequence,
    mode: AlignMode,
    align_frame: int = 0,
    scale: tuple[float, float] | None = None,
    offset: tuple[float, float] | None = None,
    ref_size: tuple[int, int] | None = None,
    driving_size: tuple[int, int] | None = None,
) -> tuple[PoseSequence, AlignmentReport]:
    """Align the driving keypoints to the reference character (module docstring), then apply the manual tweak.

    Args:
        ref: the reference image's keypoints (frame 0 is used); None only makes sense with ``mode="none"``.
        driving: the driving clip's keypoints, ``t`` frames.
        mode: ``--align``: ``"none"``, ``"unianimate"``, ``"musepose"`` or ``"linear"``.
        align_frame: ``--align_frame``: the driving frame the per-bone ratios and the neck translation are
            measured on (UniAnimate uses frame 0; MusePose ``--align_frame``).
        scale: ``--pose_scale (sx, sy)``, applied after the mode about the pivot: the aligned align frame's neck
            (else its visible body points' mean, else the frame centre). None = (1, 1).
        offset: ``--pose_offset (dx, dy)`` added after the scale, in fractions of the output width and height.
        ref_size: ``(height, width)`` the reference keypoints were measured on; default ``ref.frame_size``.
        driving_size: the same for the driving keypoints; default ``driving.frame_size``.

    Returns:
        The aligned clip (``t`` frames) normalised to the output frame (the reference's, or the driving's when
        there is no reference), and the report. Missing points stay missing; no coordinate is NaN or inf.

    Raises:
        ValueError: a bad flag value (the message names it). KeypointError: malformed keypoints.
    """
    if mode not in ALIGN_MODES:
        raise ValueError(f"--align must be one of {', '.join(ALIGN_MODES)}, got {mode!r}")
    if driving_size is not None:
        driving = replace(driving, frame_size=_size(driving_size, "driving_size"))
    validate_pose(driving, "driving pose")
    if ref is not None:
        ref = replace(ref, frame_size=_size(ref_size, "ref_size")) if ref_size is not None else ref
        validate_pose(ref, "reference pose")
    if not 0 <= align_frame < driving.num_frames:
        raise ValueError(
            f"--align_frame must be a driving frame index in [0, {driving.num_frames - 1}], got {align_frame}"
        )
    scale = _pair(scale, "--pose_scale", "sx,sy", positive=True)
    offset = _pair(offset, "--pose_offset", "dx,dy", positive=False)
    out_h, out_w = (ref if ref is not None else driving).frame_size

    used, warning = fallback_mode(ref, driving, mode)
    report = AlignmentReport(requested_mode=mode, mode=used, align_frame=align_frame)
    if warning:
        report.warnings.append(warning)
    if used in ("unianimate", "musepose"):
        assert ref is not None  # fallback_mode returns these only with a reference
        pose, fit = align_bones(driving, ref, used, align_frame)
        report.global_scale, report.scales, report.guarded = fit.global_scale, fit.scales, fit.guarded
        report.translation = (fit.translation_px[0] / out_w, fit.translation_px[1] / out_h)
    elif used == "linear":
        assert ref is not None
        linear = fit_linear(ref, driving)
        assert linear is not None  # fallback_mode checked it
        report.linear = asdict(linear)
        normalised = PixelPose.from_pose(driving, (1.0, 1.0))
        pose = _affine(
            normalised,
            np.array([linear.ax * out_w, linear.ay * out_h]),
            np.array([linear.bx * out_w, linear.by * out_h]),
        )
    else:
        pose = PixelPose.from_pose(driving, (out_w, out_h))

    if scale is not None or offset is not None:
        pivot = _pivot(pose, align_frame, (out_h, out_w))
        sxy = np.array(scale if scale is not None else (1.0, 1.0))
        shift = pivot * (1.0 - sxy) + np.array(offset if offset is not None else (0.0, 0.0)) * (out_w, out_h)
        pose = _affine(pose, sxy, shift)
        report.manual_scale, report.manual_offset = scale, offset
        report.pivot = (float(pivot[0] / out_w), float(pivot[1] / out_h))

    aligned = pose.to_pose((out_h, out_w), keep_face=driving.face is not None)
    shown = sum(int(v.sum()) for v in (pose.joints_visible, pose.hands_visible, pose.face_visible))
    kept = sum(int(visible(p).sum()) for p in (aligned.body, aligned.feet, aligned.hands))
    kept += 0 if aligned.face is None else int(visible(aligned.face).sum())
    report.points_outside_frame = shown - kept
    return aligned, report


def _size(size: tuple[int, int], name: str) -> tuple[int, int]:
    if len(size) != 2 or int(size[0]) < 1 or int(size[1]) < 1:
        raise ValueError(f"{name} must be a positive (height, width) in pixels, got {size}")
    return int(size[0]), int(size[1])


def _pair(value: tuple[float, float] | None, flag: str, form: str, positive: bool) -> tuple[float, float] | None:
    if value is None:
        return None
    pair = tuple(float(v) for v in value)
    bad = len(pair) != 2 or not all(np.isfinite(pair)) or (positive and min(pair) <= 0.0)
    if bad:
        kind = "positive" if positive else "finite"
        raise ValueError(f"{flag} must be two {kind} numbers {form} (e.g. {flag} 1.0,1.0), got {value!r}")
    return pair[0], pair[1]


def _affine(pose: PixelPose, scale: np.ndarray, shift: np.ndarray) -> PixelPose:
    """``scale * p + shift`` (per axis) on every visible point; hidden points keep their placeholder."""

    def move(points: np.ndarray, shown: np.ndarray) -> np.ndarray:
        return np.where(shown[..., None], points * scale + shift, points)

    return replace(
        pose,
        joints=move(pose.joints, pose.joints_visible),
        hands=move(pose.hands, pose.hands_visible),
        face=move(pose.face, pose.face_visible),
    )


def _pivot(pose: PixelPose, frame: int, size: tuple[int, int]) -> np.ndarray:
    """The manual tweak's centre, in pixels: the align frame's neck, else its body points' mean, else the centre."""
    if pose.joints_visible[frame, ROOT]:
        return pose.joints[frame, ROOT].copy()
    shown = pose.joints_visible[frame]
    if shown.any():
        return pose.joints[frame, shown].mean(axis=0)
    return np.array([size[1] / 2.0, size[0] / 2.0])


__all__ = [
    "ALIGN_MODES",
    "AlignMode",
    "AlignmentReport",
    "LINEAR_JOINTS",
    "LinearFit",
    "MIN_REF_BODY_POINTS",
    "align_poses",
    "fallback_mode",
    "fit_linear",
    "preview_alignment",
]
