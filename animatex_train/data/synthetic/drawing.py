"""Cartoon drawing of the synthetic characters: filled, outlined, optionally patterned parts over their keypoints."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from animatex_train.data.format.keypoints import BODY
from animatex_train.data.synthetic.characters import GRADIENT_DARKEST, CharacterLook, Colour, Fill
from animatex_train.data.synthetic.motion import PosedCharacter

_SHIFT = 4  # OpenCV fixed-point bits: shapes are placed at 1/16 px, so slow motion stays smooth
_EYE_WHITE: Colour = (248, 248, 246)


def _cv(points: np.ndarray) -> np.ndarray:
    """``(n, 2)`` pixel positions as OpenCV fixed-point integers."""
    return np.round(np.asarray(points) * (1 << _SHIFT)).astype(np.int32)


def _unit(vector: np.ndarray) -> np.ndarray:
    length = float(np.hypot(vector[0], vector[1]))
    return vector / length if length > 1e-9 else np.array([0.0, 1.0])


def _left_of(up: np.ndarray) -> np.ndarray:
    """``up`` turned a quarter towards the character's left (+x when upright)."""
    return np.array([-up[1], up[0]])


def _ellipse(centre: np.ndarray, half_across: float, half_up: float, up: np.ndarray, num: int = 28) -> np.ndarray:
    """``(num, 2)`` polygon of an ellipse whose second axis points along ``up``."""
    angles = np.linspace(0.0, 2.0 * np.pi, num, endpoint=False)[:, None]
    return centre + np.cos(angles) * half_across * _left_of(up) + np.sin(angles) * half_up * up


def _capsule(start: np.ndarray, end: np.ndarray, start_radius: float, end_radius: float) -> np.ndarray:
    """``(16, 2)`` polygon of a limb segment with rounded ends (tapered when the radii differ)."""
    axis = _unit(end - start)
    normal = _left_of(axis)
    angles = np.linspace(0.0, np.pi, 8)[:, None]
    end_cap = end + end_radius * (np.cos(angles) * normal + np.sin(angles) * axis)
    start_cap = start + start_radius * (-np.cos(angles) * normal - np.sin(angles) * axis)
    return np.concatenate([end_cap, start_cap])


def _smooth(polygon: np.ndarray, iterations: int = 2) -> np.ndarray:
    """Chaikin corner cutting: rounds a coarse closed outline into a cartoon shape."""
    for _ in range(iterations):
        following = np.roll(polygon, -1, axis=0)
        polygon = np.stack([0.75 * polygon + 0.25 * following, 0.25 * polygon + 0.75 * following], 1).reshape(-1, 2)
    return polygon


@dataclass(frozen=True)
class _Part:
    """A filled outline plus the frame its pattern follows (origin, unit axis, length in pixels)."""

    polygon: np.ndarray
    fill: Fill
    origin: np.ndarray
    axis: np.ndarray
    length_px: float


def _limb(start: np.ndarray, end: np.ndarray, radius_px: float, fill: Fill, taper: float = 0.88) -> _Part:
    return _Part(
        _capsule(start, end, radius_px, radius_px * taper),
        fill,
        start,
        _unit(end - start),
        float(np.hypot(*(end - start))),
    )


def _solid(polygon: np.ndarray, colour: Colour) -> _Part:
    return _Part(polygon, Fill(colour, "solid", colour, 1.0), polygon[0], np.array([0.0, 1.0]), 1.0)


def _paint(frame: np.ndarray, part: _Part, px_per_unit: float) -> None:
    """Fill ``part`` into ``frame`` ``(h, w, 3)`` uint8 in place; patterns are composited through an AA mask."""
    fill = part.fill
    if fill.pattern == "solid":
        cv2.fillPoly(frame, [_cv(part.polygon)], fill.colour, cv2.LINE_AA, _SHIFT)
        return
    height, width = frame.shape[:2]
    x0, y0 = np.maximum(np.floor(part.polygon.min(axis=0)).astype(int) - 1, 0)
    x1, y1 = np.minimum(np.ceil(part.polygon.max(axis=0)).astype(int) + 2, (width, height))
    if x1 <= x0 or y1 <= y0:
        return
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(mask, [_cv(part.polygon - (x0, y0))], 255, cv2.LINE_AA, _SHIFT)
    ys, xs = np.mgrid[y0:y1, x0:x1]
    offset_x, offset_y = xs - part.origin[0], ys - part.origin[1]
    along = offset_x * part.axis[0] + offset_y * part.axis[1]
    across = offset_y * part.axis[0] - offset_x * part.axis[1]
    period = fill.period * px_per_unit
    if fill.pattern == "gradient":
        shade = 1.0 - (1.0 - GRADIENT_DARKEST) * np.clip(along / part.length_px, 0.0, 1.0)
        texture = shade[..., None].astype(np.float32) * np.asarray(fill.colour, np.float32)
    else:
        if fill.pattern == "stripes":
            second = np.floor(along / period) % 2 == 1
        elif fill.pattern == "checks":
            second = (np.floor(along / period) + np.floor(across / period)) % 2 == 1
        else:  # dots
            second = ((along % period) - period / 2) ** 2 + ((across % period) - period / 2) ** 2 < (0.3 * period) ** 2
        texture = np.where(second[..., None], np.float32(fill.second_colour), np.float32(fill.colour))
    alpha = mask[..., None].astype(np.float32) / np.float32(255.0)
    region = frame[y0:y1, x0:x1]
    region[:] = np.round(region * (1.0 - alpha) + texture * alpha).astype(np.uint8)


def _paint_group(frame: np.ndarray, parts: list[_Part], look: CharacterLook, px_per_unit: float) -> None:
    """Outline all ``parts`` first, then fill them: joined parts (upper arm and forearm) share one silhouette."""
    outlines = [_cv(part.polygon) for part in parts]
    cv2.polylines(frame, outlines, True, look.outline, 2 * look.outline_px, cv2.LINE_AA, _SHIFT)
    for part in parts:
        _paint(frame, part, px_per_unit)


def _paint_hand(frame: np.ndarray, hand: np.ndarray, look: CharacterLook, px_per_unit: float) -> None:
    """A palm polygon plus five finger polylines through the ``(21, 2)`` hand keypoints (all keypoints covered)."""
    p, wrist = look.proportions, hand[0]
    along = _unit(hand[9] - wrist)
    half_width = p.hand_half_width * px_per_unit
    # Heel corners behind the wrist keep the wrist keypoint inside the palm rather than on its edge.
    heel = [wrist - 0.3 * p.palm_length * px_per_unit * along + sign * half_width * _left_of(along) for sign in (1, -1)]
    palm = cv2.convexHull(np.vstack([heel, hand[[1, 5, 9, 13, 17]]]).astype(np.float32)).reshape(-1, 2)
    fingers = [_cv(hand[1 + 4 * f : 5 + 4 * f]) for f in range(5)]
    thickness = max(2, round(2 * p.finger_radius * px_per_unit))
    cv2.polylines(frame, [_cv(palm)], True, look.outline, 2 * look.outline_px, cv2.LINE_AA, _SHIFT)
    cv2.polylines(frame, fingers, False, look.outline, thickness + 2 * look.outline_px, cv2.LINE_AA, _SHIFT)
    cv2.fillPoly(frame, [_cv(palm)], look.skin, cv2.LINE_AA, _SHIFT)
    cv2.polylines(frame, fingers, False, look.skin, thickness, cv2.LINE_AA, _SHIFT)


def _torso_point(hip: np.ndarray, up: np.ndarray, height_units: float, across_units: float, scale: float):
    return hip + scale * (height_units * up + across_units * _left_of(up))


def draw_character(frame: np.ndarray, posed: PosedCharacter, index: int, look: CharacterLook) -> None:
    """Draw frame ``index`` of ``posed`` onto ``frame`` ``(h, w, 3)`` uint8 RGB, in place, back to front.

    Every keypoint lies inside a filled part (joints at capsule centres, hand points on finger lines, face
    points on the head), so a pose estimator's target and the pixels agree.
    """
    p, s = look.proportions, posed.px_per_unit
    body, hip = posed.body[index], posed.hip_centre[index]
    joint = {name: body[i] for name, i in BODY.items()}
    up = _unit(joint["neck"] - hip)
    widest = p.torso_half_width

    # Contact shadow on the floor: darkens the background, so it is drawn first.
    shadow = np.zeros(frame.shape[:2], np.uint8)
    shadow_centre = np.array([hip[0], posed.floor_y_px])
    cv2.fillPoly(
        shadow,
        [_cv(_ellipse(shadow_centre, 1.5 * widest * s, 0.03 * s, np.array([0.0, -1.0])))],
        255,
        cv2.LINE_AA,
        _SHIFT,
    )
    frame[:] = np.round(frame * (1.0 - 0.22 * shadow[..., None].astype(np.float32) / 255.0)).astype(np.uint8)

    if "tail" in p.extras:
        tail = posed.tail[index]
        radii = np.linspace(0.045, 0.03, len(tail)) * s
        fur = Fill(look.skin, "solid", look.skin, 1.0)
        segments = [_limb(tail[i], tail[i + 1], radii[i], fur, 1.0) for i in range(len(tail) - 1)]
        tip = _solid(_ellipse(tail[-1], radii[-1] * 1.3, radii[-1] * 1.3, up), look.accent)
        _paint_group(frame, [*segments, tip], look, s)
    if "handle" in p.extras:
        heights = np.linspace(0.78, 0.22, 9)
        bulge = widest * (0.85 + 0.4 * np.sin(np.pi * (heights - 0.22) / 0.56))
        ring = _cv(
            np.stack([_torso_point(hip, up, h * p.torso_length, b, s) for h, b in zip(heights, bulge, strict=True)])
        )
        thickness = max(2, round(0.05 * s))
        cv2.polylines(frame, [ring], False, look.outline, thickness + 2 * look.outline_px, cv2.LINE_AA, _SHIFT)
        cv2.polylines(frame, [ring], False, look.torso.colour, thickness, cv2.LINE_AA, _SHIFT)
    if "spout" in p.extras:
        corners = [(0.5, -0.7), (0.84, -1.32), (0.7, -1.46), (0.16, -0.85)]  # (height / torso, across / widest)
        spout = np.stack([_torso_point(hip, up, h * p.torso_length, a * widest, s) for h, a in corners])
        _paint_group(frame, [_solid(spout, look.torso.colour)], look, s)

    head_centre = posed.head_centre[index]
    skin = Fill(look.skin, "solid", look.skin, 1.0)
    neck = _limb(joint["neck"], head_centre, 0.45 * p.head_half_width * s, skin, 1.0)
    _paint_group(frame, [neck], look, s)
    for side, sign in (("right", -1.0), ("left", 1.0)):
        leg = [
            _limb(joint[f"{side}_hip"], joint[f"{side}_knee"], p.leg_radius * s, look.thighs),
            _limb(joint[f"{side}_knee"], joint[f"{side}_ankle"], 0.88 * p.leg_radius * s, look.shins),
            _limb(
                joint[f"{side}_ankle"],
                posed.feet[index, 0 if sign > 0 else 1],
                p.foot_radius * s,
                Fill(look.shoes, "solid", look.shoes, 1.0),
                1.1,
            ),
        ]
        _paint_group(frame, leg, look, s)

    profile = [_torso_point(hip, up, h * p.torso_length, w, s) for h, w in p.torso_profile]
    profile += [_torso_point(hip, up, h * p.torso_length, -w, s) for h, w in reversed(p.torso_profile)]
    torso = _Part(_smooth(np.stack(profile)), look.torso, joint["neck"], -up, p.torso_length * s)
    _paint_group(frame, [torso], look, s)

    for side, hand_index in (("right", 1), ("left", 0)):
        arm = [
            _limb(joint[f"{side}_shoulder"], joint[f"{side}_elbow"], p.arm_radius * s, look.upper_arms),
            _limb(joint[f"{side}_elbow"], joint[f"{side}_wrist"], 0.9 * p.arm_radius * s, look.forearms),
        ]
        _paint_group(frame, arm, look, s)
        _paint_hand(frame, posed.hands[index, hand_index], look, s)

    _draw_head(frame, posed, index, look)


def _draw_head(frame: np.ndarray, posed: PosedCharacter, index: int, look: CharacterLook) -> None:
    """Ears, head, hair or lid knob, muzzle and face; face features sit exactly on the face keypoints."""
    p, s = look.proportions, posed.px_per_unit
    body, centre, up = posed.body[index], posed.head_centre[index], posed.head_up[index]
    across_px, up_px = p.head_half_width * s, p.head_half_height * s

    def local(x: float, y: float) -> np.ndarray:
        return centre + x * across_px * _left_of(up) + y * up_px * up

    behind: list[_Part] = []
    for ear in (body[BODY["left_ear"]], body[BODY["right_ear"]]):
        if p.ears == "round":
            behind.append(_solid(_ellipse(ear, 0.3 * across_px, 0.42 * up_px, up, 16), look.skin))
        elif p.ears == "knob":
            behind.append(_solid(_ellipse(ear, 0.26 * across_px, 0.34 * across_px, up, 16), look.accent))
    if p.ears == "pointy":
        for sign in (1.0, -1.0):
            outer = np.stack([local(sign * 0.3, 0.6), local(sign * 0.78, 1.62), local(sign * 0.92, 0.35)])
            inner = np.stack([local(sign * 0.42, 0.7), local(sign * 0.76, 1.35), local(sign * 0.8, 0.55)])
            behind += [_solid(outer, look.skin), _solid(inner, look.accent)]
    if "lid_knob" in p.extras:
        behind.append(_solid(_ellipse(local(0.0, 1.05), 0.22 * across_px, 0.3 * up_px, up, 16), look.accent))
    for part in behind:
        _paint_group(frame, [part], look, s)
    _paint_group(frame, [_solid(_ellipse(centre, across_px, up_px, up), look.skin)], look, s)

    yaw = float(posed.head_yaw[index])
    if "hair" in p.extras:
        angles = np.linspace(0.0, np.pi, 15)
        cap = [local(1.1 * np.cos(a) + 0.15 * yaw, max(1.12 * np.sin(a), 0.4)) for a in angles]
        _paint_group(frame, [_solid(np.stack(cap), look.accent)], look, s)
    if "muzzle" in p.extras:
        muzzle = _ellipse(local(0.45 * yaw, -0.42), 0.42 * across_px, 0.4 * up_px, up, 20)
        _paint_group(frame, [_solid(muzzle, look.accent)], look, s)
    pupil = max(0.1 * across_px, 1.6)
    for eye in (body[BODY["left_eye"]], body[BODY["right_eye"]]):
        cv2.fillPoly(
            frame,
            [_cv(_ellipse(eye, max(0.2 * across_px, 2.6), max(0.24 * up_px, 2.8), up))],
            _EYE_WHITE,
            cv2.LINE_AA,
            _SHIFT,
        )
        cv2.fillPoly(frame, [_cv(_ellipse(eye, pupil, pupil * 1.15, up, 16))], look.eyes, cv2.LINE_AA, _SHIFT)
    nose = body[BODY["nose"]]
    cv2.fillPoly(
        frame,
        [_cv(_ellipse(nose, max(0.09 * across_px, 1.6), max(0.07 * up_px, 1.3), up, 12))],
        look.outline,
        cv2.LINE_AA,
        _SHIFT,
    )
    mouth = _cv(np.stack([local(0.45 * yaw + x, -0.5 + 0.1 * (x / 0.22) ** 2) for x in np.linspace(-0.22, 0.22, 7)]))
    cv2.polylines(frame, [mouth], False, look.outline, max(1, look.outline_px), cv2.LINE_AA, _SHIFT)
