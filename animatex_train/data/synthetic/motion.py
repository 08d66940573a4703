"""Random dance motion of the synthetic characters: smooth joint-angle curves, then forward kinematics to keypoints.

Angles are in radians in the image plane, measured from straight down (+y) and growing towards +x, so that a
direction is ``(sin(angle), cos(angle))``. The character faces the camera: its left side (side index 0, sign
+1) is on the image's right.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from animatex_train.data.format.keypoints import BODY, NUM_BODY, NUM_HAND_POINTS
from animatex_train.data.synthetic.proportions import BodyProportions

SIDE_SIGNS = (1.0, -1.0)  # left, right: the order of hands and feet in ``PoseSequence``
# Every position is rounded to 1/64 px: it makes the last-ulp differences of sin/cos between CPUs and libm
# versions (about 1e-13 px) practically never change a drawn pixel or a stored float32 keypoint.
_GRID_PX = 64.0
# Finger layout, thumb to pinky: where each finger starts (along the palm as a fraction of the palm length, across
# it as a fraction of its half width, thumb side positive), its fan angle and its length relative to the middle finger.
_FINGER_ALONG = np.array([0.25, 1.0, 1.0, 0.95, 0.86])
_FINGER_ACROSS = np.array([0.8, 0.6, 0.15, -0.3, -0.7])
_FINGER_FAN = np.array([0.85, 0.18, 0.0, -0.16, -0.34])
_FINGER_SCALE = np.array([0.9, 0.9, 1.0, 0.92, 0.75])
_SEGMENT_SHARES = np.array([0.0, 0.42, 0.32, 0.26])  # knuckle, then three phalanges (thumb: CMC, MCP, IP, tip)


@dataclass(frozen=True)
class Oscillation:
    """A smooth random curve of time: ``base + sum_k amplitude_k * sin(2 pi frequency_k t + phase_k)``, clipped.

    Attributes:
        base: mean value.
        amplitudes: amplitude of each sinusoid.
        frequencies_hz: frequency of each sinusoid.
        phases: phase of each sinusoid, in radians.
        low: lower clip.
        high: upper clip.
    """

    base: float
    amplitudes: tuple[float, ...]
    frequencies_hz: tuple[float, ...]
    phases: tuple[float, ...]
    low: float = -np.inf
    high: float = np.inf

    def __call__(self, times_s: np.ndarray) -> np.ndarray:
        """``(t,)`` values at ``times_s`` ``(t,)``."""
        waves = np.asarray(self.amplitudes)[:, None] * np.sin(
            2.0 * np.pi * np.asarray(self.frequencies_hz)[:, None] * times_s[None, :] + np.asarray(self.phases)[:, None]
        )
        return np.clip(self.base + waves.sum(axis=0), self.low, self.high)

    def delayed(self, phase: float) -> Oscillation:
        """The same curve with every sinusoid shifted by ``phase`` radians (``pi`` gives the opposite move)."""
        return replace(self, phases=tuple(p + phase for p in self.phases))


def _oscillation(
    rng: np.random.Generator,
    tempo_hz: float,
    base: float,
    amplitude: float,
    low: float = -np.inf,
    high: float = np.inf,
    harmonics: tuple[float, ...] = (0.5, 1.0, 2.0),
) -> Oscillation:
    """Sinusoids at a few multiples of the dance tempo, slightly detuned so that the motion never repeats exactly.

    ``amplitude`` is the largest possible excursion: it is split among the sinusoids, and the fastest one gets
    a smaller share so that no joint jumps between frames at low frame rates.
    """
    weights = rng.uniform(0.2, 1.0, size=len(harmonics)) / np.maximum(np.asarray(harmonics), 1.0)
    amplitudes = amplitude * weights / weights.sum()
    frequencies = tempo_hz * np.asarray(harmonics) * rng.uniform(0.9, 1.1, size=len(harmonics))
    phases = rng.uniform(0.0, 2.0 * np.pi, size=len(harmonics))
    return Oscillation(
        float(base), tuple(amplitudes.tolist()), tuple(frequencies.tolist()), tuple(phases.tolist()), low, high
    )


def _pair(
    rng: np.random.Generator, left: Oscillation, make: Callable[[], Oscillation]
) -> tuple[Oscillation, Oscillation]:
    """Left and right curves that move together, in opposition or independently (a third of videos each)."""
    mode = int(rng.integers(3))
    right = left if mode == 0 else left.delayed(np.pi) if mode == 1 else make()
    return left, right


@dataclass(frozen=True)
class DanceMotion:
    """Every curve of one video's dance and where the character stands in the frame.

    Angles are radians, ``sway`` and ``hop`` body units, ``drift_px`` pixels; pairs are (left, right).

    Attributes:
        px_per_unit: character scale, pixels per body unit.
        floor_y_px: image row that the lower foot touches.
        centre_x_px: mean image column of the hip centre.
        drift_px: slow horizontal wandering of the whole character.
        sway: horizontal swing of the hips.
        hop: small jumps (clipped at 0).
        torso_lean: torso angle from upright, positive towards the character's left.
        head_tilt: head angle relative to the torso.
        head_yaw: head turn in [-1, 1] (1 = face towards the character's left); moves the face sideways.
        shoulders: upper-arm angles away from the body.
        elbows: elbow bends (0 = straight).
        elbow_signs: which way each elbow bends (+1 = away from the body, -1 = across it).
        wrists: hand angles relative to the forearm.
        finger_curls: 0 = open hand, 1 = fist.
        hips: thigh angles away from the body.
        knees: knee bends, drawn as knees opening sideways as in a plie.
        tail_wag: tail swing.
    """

    px_per_unit: float
    floor_y_px: float
    centre_x_px: float
    drift_px: Oscillation
    sway: Oscillation
    hop: Oscillation
    torso_lean: Oscillation
    head_tilt: Oscillation
    head_yaw: Oscillation
    shoulders: tuple[Oscillation, Oscillation]
    elbows: tuple[Oscillation, Oscillation]
    elbow_signs: tuple[float, float]
    wrists: tuple[Oscillation, Oscillation]
    finger_curls: tuple[Oscillation, Oscillation]
    hips: tuple[Oscillation, Oscillation]
    knees: tuple[Oscillation, Oscillation]
    tail_wag: Oscillation


def sample_motion(proportions: BodyProportions, rng: np.random.Generator, size: tuple[int, int]) -> DanceMotion:
    """A random dance for a character of ``proportions`` in frames of ``size`` ``(height, width)``.

    The tempo (0.2-0.4 Hz for the main sway) keeps the fastest limb below about a tenth of the frame per
    frame at 8 fps, so that consecutive frames differ smoothly.
    """
    height, width = size
    tempo = float(rng.uniform(0.2, 0.4))
    # Full height from the frame height, capped so that the torso and most arm poses fit the frame width.
    px_per_unit = min(
        rng.uniform(0.62, 0.8) * height / proportions.standing_height,
        0.9 * width / (0.75 * proportions.arm_span),
        0.6 * width / (2.0 * proportions.torso_half_width),
    )
    rest = proportions.arm_rest_abduction
    shoulder = _oscillation(rng, tempo, rest + rng.uniform(0.0, 0.5), rng.uniform(0.6, 1.4), -0.3, 2.9)
    elbow = _oscillation(rng, tempo, rng.uniform(0.2, 0.9), rng.uniform(0.4, 1.0), 0.0, 2.3)
    wrist = _oscillation(rng, tempo, 0.0, 0.5)
    curl = _oscillation(rng, tempo, rng.uniform(0.1, 0.6), 0.6, 0.0, 1.0, harmonics=(0.5, 1.0))
    hip = _oscillation(rng, tempo, rng.uniform(0.03, 0.12), rng.uniform(0.0, 0.12), -0.05, 0.45)
    knee = _oscillation(rng, tempo, rng.uniform(0.05, 0.25), rng.uniform(0.1, 0.3), 0.0, 0.8, harmonics=(1.0, 2.0))
    return DanceMotion(
        px_per_unit=float(px_per_unit),
        floor_y_px=float(rng.uniform(0.86, 0.95) * height),
        centre_x_px=float(rng.uniform(0.4, 0.6) * width),
        drift_px=_oscillation(rng, tempo, 0.0, rng.uniform(0.0, 0.12) * width, harmonics=(0.15, 0.25)),
        sway=_oscillation(rng, tempo, 0.0, rng.uniform(0.0, 0.04), harmonics=(0.5, 1.0)),
        hop=_oscillation(rng, tempo, rng.uniform(-0.04, 0.0), rng.uniform(0.0, 0.05), 0.0, harmonics=(1.0,)),
        torso_lean=_oscillation(rng, tempo, 0.0, rng.uniform(0.05, 0.2)),
        head_tilt=_oscillation(rng, tempo, 0.0, rng.uniform(0.05, 0.3)),
        head_yaw=_oscillation(rng, tempo, 0.0, rng.uniform(0.0, 0.9), -1.0, 1.0, harmonics=(0.25, 0.5)),
        shoulders=_pair(rng, shoulder, lambda: _oscillation(rng, tempo, shoulder.base, 1.0, -0.3, 2.9)),
        elbows=_pair(rng, elbow, lambda: _oscillation(rng, tempo, elbow.base, 0.8, 0.0, 2.3)),
        elbow_signs=(float(rng.choice([1.0, -1.0], p=[0.7, 0.3])), float(rng.choice([1.0, -1.0], p=[0.7, 0.3]))),
        wrists=(wrist, _oscillation(rng, tempo, 0.0, 0.5)),
        finger_curls=(curl, _oscillation(rng, tempo, curl.base, 0.6, 0.0, 1.0, harmonics=(0.5, 1.0))),
        hips=_pair(rng, hip, lambda: _oscillation(rng, tempo, hip.base, 0.1, -0.05, 0.45)),
        knees=(knee, knee.delayed(float(rng.choice([0.0, np.pi])))),  # bounce together or shift the weight
        tail_wag=_oscillation(rng, tempo, 0.0, rng.uniform(0.2, 0.6), harmonics=(0.5, 1.0)),
    )


@dataclass(frozen=True)
class PosedCharacter:
    """A character's geometry over ``t`` frames, in pixels (x right, y down, pixel centres at integers).

    Attributes:
        body: ``(t, 18, 2)`` OpenPose-18 joints (``keypoints.BODY_NAMES`` order).
        feet: ``(t, 2, 2)`` left toes, right toes.
        hands: ``(t, 2, 21, 2)`` left hand, right hand (wrist, then 4 points per finger, thumb to pinky).
        hip_centre: ``(t, 2)`` midpoint of the hips.
        head_centre: ``(t, 2)`` centre of the head ellipse.
        head_up: ``(t, 2)`` unit vector from the chin to the crown.
        head_yaw: ``(t,)`` head turn in [-1, 1].
        ear_occluded: ``(t, 2)`` bool, left and right ear turned away from the camera (a pose estimator
            would not see them).
        tail: ``(t, 5, 2)`` tail polyline from root to tip (drawn only by styles with a tail).
        px_per_unit: pixels per body unit.
        floor_y_px: image row of the floor.
    """

    body: np.ndarray
    feet: np.ndarray
    hands: np.ndarray
    hip_centre: np.ndarray
    head_centre: np.ndarray
    head_up: np.ndarray
    head_yaw: np.ndarray
    ear_occluded: np.ndarray
    tail: np.ndarray
    px_per_unit: float
    floor_y_px: float


def _direction(angle: np.ndarray) -> np.ndarray:
    """``(..., 2)`` unit vectors for angles ``(...)`` measured from straight down towards +x."""
    return np.stack([np.sin(angle), np.cos(angle)], axis=-1)


def _across(up: np.ndarray) -> np.ndarray:
    """``(..., 2)``: ``up`` turned a quarter towards the character's left (+x when upright)."""
    return np.stack([-up[..., 1], up[..., 0]], axis=-1)


def _hand_points(wrist: np.ndarray, angle: np.ndarray, curl: np.ndarray, side: float, p: BodyProportions):
    """``(t, 21, 2)`` hand keypoints, in units, from the wrist ``(t, 2)``, hand angle ``(t,)`` and curl ``(t,)``.

    Palms face the camera with thumbs pointing away from the body. Curling shortens the fingers as seen
    from the front and swings the thumb over the palm.
    """
    along = _direction(angle)[:, None, :]  # (t, 1, 2)
    thumb_side = side * np.stack([along[..., 1], -along[..., 0]], axis=-1)
    bases = (
        wrist[:, None, :]
        + _FINGER_ALONG[None, :, None] * p.palm_length * along
        + _FINGER_ACROSS[None, :, None] * p.hand_half_width * thumb_side
    )
    fan = _FINGER_FAN[None, :] - np.outer(curl, [0.8, 0.0, 0.0, 0.0, 0.0])  # (t, 5)
    finger_dir = _direction(angle[:, None] + side * fan)  # (t, 5, 2)
    lengths = (p.finger_length * _FINGER_SCALE[None, :] * (1.0 - 0.6 * curl[:, None]))[..., None]  # (t, 5, 1)
    offsets = np.cumsum(_SEGMENT_SHARES)[None, None, :, None] * lengths[:, :, None, :] * finger_dir[:, :, None, :]
    fingers = bases[:, :, None, :] + offsets  # (t, 5, 4, 2)
    return np.concatenate([wrist[:, None, :], fingers.reshape(len(wrist), 20, 2)], axis=1)


def pose_character(p: BodyProportions, motion: DanceMotion, num_frames: int, fps: float) -> PosedCharacter:
    """Forward kinematics: the dance curves sampled at ``fps`` turned into joint positions in pixels.

    The body is built in units around the hip centre, then scaled and placed so that the lower foot stands on
    the floor (bending the knees lowers the body instead of lifting the feet).
    """
    times = np.arange(num_frames, dtype=np.float64) / fps
    n = num_frames
    body = np.zeros((n, NUM_BODY, 2))
    lean = motion.torso_lean(times)
    torso_up = -_direction(lean)
    hip_centre = np.stack([motion.sway(times), np.zeros(n)], axis=-1)
    neck = hip_centre + p.torso_length * torso_up
    body[:, BODY["neck"]] = neck
    # The pelvis follows the torso lean only partly: the legs carry the weight.
    pelvis_across = _across(-_direction(0.3 * lean))
    head_angle = lean + motion.head_tilt(times)
    head_up, head_across = -_direction(head_angle), _across(-_direction(head_angle))
    head_centre = neck + (p.neck_length + p.head_half_height) * head_up
    yaw = motion.head_yaw(times)

    def on_head(across: np.ndarray, up: float) -> np.ndarray:
        return head_centre + (across * p.head_half_width)[:, None] * head_across + up * p.head_half_height * head_up

    body[:, BODY["nose"]] = on_head(0.45 * yaw, -0.25)
    hands, feet = np.zeros((n, 2, NUM_HAND_POINTS, 2)), np.zeros((n, 2, 2))
    for index, (side, name) in enumerate(zip(SIDE_SIGNS, ("left", "right"), strict=True)):
        body[:, BODY[f"{name}_eye"]] = on_head(side * 0.36 + 0.3 * yaw, 0.08)
        body[:, BODY[f"{name}_ear"]] = on_head(side * 0.86 + 0.08 * yaw, 0.05)
        shoulder = neck + side * p.shoulder_half_width * _across(torso_up)
        upper_angle = lean + side * motion.shoulders[index](times)
        elbow = shoulder + p.upper_arm_length * _direction(upper_angle)
        forearm_angle = upper_angle + side * motion.elbow_signs[index] * motion.elbows[index](times)
        wrist = elbow + p.forearm_length * _direction(forearm_angle)
        hand_angle = forearm_angle + side * motion.wrists[index](times)
        hands[:, index] = _hand_points(wrist, hand_angle, motion.finger_curls[index](times), side, p)
        hip = hip_centre + side * p.hip_half_width * pelvis_across
        spread, bend = motion.hips[index](times), motion.knees[index](times)
        knee = hip + p.thigh_length * _direction(side * (spread + bend))
        ankle = knee + p.shin_length * _direction(side * (spread - bend))
        feet[:, index] = ankle + p.foot_length * _direction(np.full(n, side * 0.95))
        for joint, point in (
            ("shoulder", shoulder),
            ("elbow", elbow),
            ("wrist", wrist),
            ("hip", hip),
            ("knee", knee),
            ("ankle", ankle),
        ):
            body[:, BODY[f"{name}_{joint}"]] = point
    # Tail: five points from the back of the pelvis, curling up on the character's right and wagging.
    wag = motion.tail_wag(times)[:, None]
    tail_angles = -(1.4 + 0.35 * np.arange(5)[None, :] + wag * (0.3 + 0.25 * np.arange(5)[None, :]))
    steps = 0.075 * _direction(tail_angles)
    tail = hip_centre[:, None, :] + np.concatenate([np.zeros((n, 1, 2)), np.cumsum(steps[:, 1:], axis=1)], axis=1)

    # Stand on the floor: the lowest point of either foot (ankle or toes, plus the foot's thickness).
    lowest = np.maximum(body[:, [BODY["left_ankle"], BODY["right_ankle"]], 1].max(axis=1), feet[..., 1].max(axis=1))
    scale = motion.px_per_unit
    origin = np.stack(
        [
            motion.centre_x_px + motion.drift_px(times),
            motion.floor_y_px - scale * (lowest + p.foot_radius + motion.hop(times)),
        ],
        axis=-1,
    )

    def to_px(points: np.ndarray) -> np.ndarray:
        shape = (n,) + (1,) * (points.ndim - 2) + (2,)
        return np.round((origin.reshape(shape) + scale * points) * _GRID_PX) / _GRID_PX

    return PosedCharacter(
        body=to_px(body),
        feet=to_px(feet),
        hands=to_px(hands),
        hip_centre=to_px(hip_centre),
        head_centre=to_px(head_centre),
        head_up=head_up,
        head_yaw=yaw,
        ear_occluded=np.stack([yaw > 0.55, yaw < -0.55], axis=-1),
        tail=to_px(tail),
        px_per_unit=float(scale),
        floor_y_px=motion.floor_y_px,
    )
