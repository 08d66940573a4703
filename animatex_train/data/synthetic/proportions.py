"""Body styles of the synthetic characters (human, teapot, fox): bone lengths and part sizes, and their per-video
variation."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class BodyProportions:
    """Bone lengths and part sizes of one body style, in body units (pixels = units * ``px_per_unit``).

    The skeleton is drawn facing the camera, so the character's left side is on the image's right.

    Attributes:
        head_half_width: head ellipse half-axis across the head.
        head_half_height: head ellipse half-axis along the head.
        neck_length: neck keypoint to the bottom of the head.
        torso_length: hip centre to neck keypoint (the neck is the midpoint of the shoulders, as in DWPose).
        shoulder_half_width: neck to each shoulder.
        hip_half_width: hip centre to each hip.
        torso_profile: outline of one side of the torso, top to bottom, as ``(height, half_width)`` pairs;
            ``height`` is a fraction of ``torso_length`` above the hip centre, ``half_width`` is in units.
            Mirrored to give the torso polygon; it must contain the shoulders and the hips.
        upper_arm_length: shoulder to elbow.
        forearm_length: elbow to wrist.
        arm_radius: half thickness of the arms.
        palm_length: wrist to the knuckles of the middle finger.
        finger_length: knuckle to fingertip of the middle finger.
        hand_half_width: half width of the palm.
        finger_radius: half thickness of the fingers.
        thigh_length: hip to knee.
        shin_length: knee to ankle.
        leg_radius: half thickness of the legs.
        foot_length: ankle to the toe point.
        foot_radius: half thickness of the feet.
        arm_rest_abduction: mean angle of the upper arms away from the body, in radians (0 = hanging down).
        ears: how the ears are drawn (``round`` human ears, ``knob`` lid knobs, ``pointy`` animal ears).
        extras: extra drawn parts without keypoints (``hair``, ``spout``, ``handle``, ``lid_knob``, ``tail``,
            ``muzzle``).
    """

    head_half_width: float
    head_half_height: float
    neck_length: float
    torso_length: float
    shoulder_half_width: float
    hip_half_width: float
    torso_profile: tuple[tuple[float, float], ...]
    upper_arm_length: float
    forearm_length: float
    arm_radius: float
    palm_length: float
    finger_length: float
    hand_half_width: float
    finger_radius: float
    thigh_length: float
    shin_length: float
    leg_radius: float
    foot_length: float
    foot_radius: float
    arm_rest_abduction: float
    ears: Literal["round", "knob", "pointy"]
    extras: tuple[str, ...]

    @property
    def arm_length(self) -> float:
        return self.upper_arm_length + self.forearm_length

    @property
    def standing_height(self) -> float:
        """Sole to top of the head with straight legs, in units."""
        legs = self.thigh_length + self.shin_length + self.foot_radius
        return legs + self.torso_length + self.neck_length + 2.0 * self.head_half_height

    @property
    def arm_span(self) -> float:
        """Fingertip to fingertip with both arms held out sideways, in units."""
        return 2.0 * (self.shoulder_half_width + self.arm_length + self.palm_length + self.finger_length)

    @property
    def torso_half_width(self) -> float:
        """Widest half width of the torso, in units."""
        return max(half_width for _, half_width in self.torso_profile)


def _ellipse_profile(centre: float, half_height: float, half_width: float, torso_length: float) -> tuple:
    """One side of an elliptic torso as a ``torso_profile`` (centre and half height in units)."""
    angles = np.linspace(0.0, np.pi, 11)
    return tuple(
        (round(float((centre + half_height * np.cos(a)) / torso_length), 4), round(float(half_width * np.sin(a)), 4))
        for a in angles
    )


BODY_STYLES: dict[str, BodyProportions] = {
    # Adult human proportions: about 7.5 heads tall, arms as long as the torso.
    "human": BodyProportions(
        head_half_width=0.062,
        head_half_height=0.075,
        neck_length=0.035,
        torso_length=0.30,
        shoulder_half_width=0.105,
        hip_half_width=0.06,
        torso_profile=(
            (1.06, 0.085),
            (1.0, 0.128),
            (0.9, 0.13),
            (0.62, 0.098),
            (0.35, 0.09),
            (0.08, 0.102),
            (-0.1, 0.095),
            (-0.17, 0.04),
        ),
        upper_arm_length=0.16,
        forearm_length=0.145,
        arm_radius=0.025,
        palm_length=0.05,
        finger_length=0.045,
        hand_half_width=0.024,
        finger_radius=0.0075,
        thigh_length=0.235,
        shin_length=0.225,
        leg_radius=0.036,
        foot_length=0.065,
        foot_radius=0.022,
        arm_rest_abduction=0.3,
        ears="round",
        extras=("hair",),
    ),
    # Anthropomorphic teapot: a big round body, a small lid for a head, stubby limbs (arms ~0.4 of the torso).
    "teapot": BodyProportions(
        head_half_width=0.095,
        head_half_height=0.06,
        neck_length=0.012,
        torso_length=0.34,
        shoulder_half_width=0.13,
        hip_half_width=0.1,
        torso_profile=_ellipse_profile(0.14, 0.24, 0.225, 0.34),
        upper_arm_length=0.075,
        forearm_length=0.07,
        arm_radius=0.03,
        palm_length=0.035,
        finger_length=0.022,
        hand_half_width=0.028,
        finger_radius=0.011,
        thigh_length=0.08,
        shin_length=0.075,
        leg_radius=0.036,
        foot_length=0.06,
        foot_radius=0.028,
        arm_rest_abduction=0.8,
        ears="knob",
        extras=("handle", "spout", "lid_knob"),
    ),
    # Cartoon fox: an oversized head with pointed ears and a muzzle, a slim torso, long thin legs, a tail.
    "fox": BodyProportions(
        head_half_width=0.105,
        head_half_height=0.095,
        neck_length=0.03,
        torso_length=0.24,
        shoulder_half_width=0.075,
        hip_half_width=0.055,
        torso_profile=(
            (1.08, 0.05),
            (1.0, 0.088),
            (0.8, 0.092),
            (0.45, 0.085),
            (0.1, 0.082),
            (-0.12, 0.06),
            (-0.2, 0.02),
        ),
        upper_arm_length=0.13,
        forearm_length=0.13,
        arm_radius=0.018,
        palm_length=0.03,
        finger_length=0.03,
        hand_half_width=0.02,
        finger_radius=0.0065,
        thigh_length=0.24,
        shin_length=0.24,
        leg_radius=0.024,
        foot_length=0.07,
        foot_radius=0.02,
        arm_rest_abduction=0.4,
        ears="pointy",
        extras=("tail", "muzzle"),
    ),
}


def jitter_proportions(proportions: BodyProportions, rng: np.random.Generator) -> BodyProportions:
    """Per-video variation of a style: head, arms, legs and torso width scaled by +-10 % each.

    Groups are scaled together (not each length alone) so that the shoulders and hips stay inside the torso.
    """
    head, arms, legs, width = rng.uniform(0.9, 1.1, size=4)
    return replace(
        proportions,
        head_half_width=proportions.head_half_width * head,
        head_half_height=proportions.head_half_height * head,
        shoulder_half_width=proportions.shoulder_half_width * width,
        hip_half_width=proportions.hip_half_width * width,
        torso_profile=tuple((h, w * width) for h, w in proportions.torso_profile),
        upper_arm_length=proportions.upper_arm_length * arms,
        forearm_length=proportions.forearm_length * arms,
        thigh_length=proportions.thigh_length * legs,
        shin_length=proportions.shin_length * legs,
    )
