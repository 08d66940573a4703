"""Body styles of the synthetic characters: proportions per style and a random look (colours, patterns) per video."""

from __future__ import annotations

import colorsys
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

Colour = tuple[int, int, int]
PATTERNS = ("solid", "stripes", "checks", "dots", "gradient")
# Darkest shade a gradient fill reaches (fraction of the base colour); the contrast check covers it.
GRADIENT_DARKEST = 0.72
# Smallest per-channel difference between any character colour and any background colour, so that every
# keypoint lies on pixels that are clearly not background (the tests check exactly this).
MIN_CONTRAST = 64


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
        head_half_width=0.062, head_half_height=0.075, neck_length=0.035, torso_length=0.30,
        shoulder_half_width=0.105, hip_half_width=0.06,
        torso_profile=((1.06, 0.085), (1.0, 0.128), (0.9, 0.13), (0.62, 0.098), (0.35, 0.09), (0.08, 0.102),
                       (-0.1, 0.095), (-0.17, 0.04)),
        upper_arm_length=0.16, forearm_length=0.145, arm_radius=0.025,
        palm_length=0.05, finger_length=0.045, hand_half_width=0.024, finger_radius=0.0075,
        thigh_length=0.235, shin_length=0.225, leg_radius=0.036, foot_length=0.065, foot_radius=0.022,
        arm_rest_abduction=0.3, ears="round", extras=("hair",),
    ),
    # Anthropomorphic teapot: a big round body, a small lid for a head, stubby limbs (arms ~0.4 of the torso).
    "teapot": BodyProportions(
        head_half_width=0.095, head_half_height=0.06, neck_length=0.012, torso_length=0.34,
        shoulder_half_width=0.13, hip_half_width=0.1,
        torso_profile=_ellipse_profile(0.14, 0.24, 0.225, 0.34),
        upper_arm_length=0.075, forearm_length=0.07, arm_radius=0.03,
        palm_length=0.035, finger_length=0.022, hand_half_width=0.028, finger_radius=0.011,
        thigh_length=0.08, shin_length=0.075, leg_radius=0.036, foot_length=0.06, foot_radius=0.028,
        arm_rest_abduction=0.8, ears="knob", extras=("handle", "spout", "lid_knob"),
    ),
    # Cartoon fox: an oversized head with pointed ears and a muzzle, a slim torso, long thin legs, a tail.
    "fox": BodyProportions(
        head_half_width=0.105, head_half_height=0.095, neck_length=0.03, torso_length=0.24,
        shoulder_half_width=0.075, hip_half_width=0.055,
        torso_profile=((1.08, 0.05), (1.0, 0.088), (0.8, 0.092), (0.45, 0.085), (0.1, 0.082), (-0.12, 0.06),
                       (-0.2, 0.02)),
        upper_arm_length=0.13, forearm_length=0.13, arm_radius=0.018,
        palm_length=0.03, finger_length=0.03, hand_half_width=0.02, finger_radius=0.0065,
        thigh_length=0.24, shin_length=0.24, leg_radius=0.024, foot_length=0.07, foot_radius=0.02,
        arm_rest_abduction=0.4, ears="pointy", extras=("tail", "muzzle"),
    ),
}  # fmt: skip


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


@dataclass(frozen=True)
class Fill:
    """How one body part is painted.

    Attributes:
        colour: main RGB colour.
        pattern: one of ``PATTERNS``; stripes run across the part's axis so that they move with the part.
        second_colour: the other colour of stripes, checks and dots (unused by ``solid`` and ``gradient``).
        period: pattern period in body units.
    """

    colour: Colour
    pattern: str
    second_colour: Colour
    period: float


@dataclass(frozen=True)
class CharacterLook:
    """Everything about a character that is fixed for one video: shape and paint.

    Attributes:
        style: key of ``BODY_STYLES``.
        proportions: the style's proportions after per-video jitter.
        skin: colour of the head, neck and hands (fur for the fox, glaze for the teapot).
        torso: paint of the torso (shirt, pot glaze, fur).
        upper_arms: paint of the upper arms (sleeves).
        forearms: paint of the forearms.
        thighs: paint of the thighs (trousers).
        shins: paint of the shins.
        shoes: colour of the feet.
        accent: hair, lid knob, ear and tail tips, muzzle.
        eyes: pupil colour.
        outline: colour of the cartoon outlines (always dark).
        outline_px: outline thickness in pixels.
    """

    style: str
    proportions: BodyProportions
    skin: Colour
    torso: Fill
    upper_arms: Fill
    forearms: Fill
    thighs: Fill
    shins: Fill
    shoes: Colour
    accent: Colour
    eyes: Colour
    outline: Colour
    outline_px: int


def hsv_colour(hue: float, saturation: float, value: float) -> Colour:
    """RGB 0-255 from HSV in [0, 1] (hue wraps)."""
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, saturation, value)
    return (round(r * 255), round(g * 255), round(b * 255))


def contrast(colour: Colour, others: np.ndarray) -> int:
    """Smallest over ``others`` ``(k, 3)`` of the largest per-channel difference to ``colour``."""
    return int(np.abs(others.astype(np.int32) - np.asarray(colour, dtype=np.int32)).max(axis=1).min())


def _pick(rng: np.random.Generator, sample: Callable[[], Colour], avoid: np.ndarray, shade: bool = False) -> Colour:
    """A colour from ``sample`` that keeps ``MIN_CONTRAST`` from every colour in ``avoid`` ``(k, 3)``.

    Rejection sampling with a bounded number of tries, then a darkened colour: backgrounds are light
    (``synthetic.sample_background``), so a dark colour always contrasts and generation always ends.
    """
    for _ in range(64):
        colour = sample()
        darkest = tuple(round(c * GRADIENT_DARKEST) for c in colour) if shade else colour
        if contrast(colour, avoid) >= MIN_CONTRAST and contrast(darkest, avoid) >= MIN_CONTRAST:
            return colour
    return tuple(round(c * 0.3) for c in colour)


def _vivid(rng: np.random.Generator) -> Colour:
    return hsv_colour(rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.45, 0.95))


def _skin_tone(rng: np.random.Generator) -> Colour:
    # Human skin tones lie on a narrow orange hue band, from light to dark.
    return hsv_colour(rng.uniform(0.04, 0.1), rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.98))


def _hair(rng: np.random.Generator) -> Colour:
    if rng.random() < 0.75:  # natural: black, browns, blond, red
        return hsv_colour(rng.uniform(0.02, 0.12), rng.uniform(0.4, 0.9), rng.uniform(0.1, 0.8))
    return _vivid(rng)


def _fur(rng: np.random.Generator) -> Colour:
    if rng.random() < 0.7:  # red, brown and grey foxes
        return hsv_colour(rng.uniform(0.02, 0.09), rng.uniform(0.55, 1.0), rng.uniform(0.5, 0.95))
    return _vivid(rng)


def _fox_accent(rng: np.random.Generator) -> Colour:
    if rng.random() < 0.5:  # cream tips and muzzle, unless the background is too light for them
        return hsv_colour(rng.uniform(0.05, 0.15), rng.uniform(0.0, 0.3), 1.0)
    return hsv_colour(rng.uniform(0.0, 0.1), rng.uniform(0.3, 0.8), rng.uniform(0.15, 0.4))


def _fill(rng: np.random.Generator, avoid: np.ndarray, colour: Colour | None = None) -> Fill:
    """A random paint: solid half of the time, otherwise a pattern with a second vivid colour."""
    pattern = PATTERNS[0] if rng.random() < 0.5 else PATTERNS[int(rng.integers(1, len(PATTERNS)))]
    main = colour if colour is not None else _pick(rng, lambda: _vivid(rng), avoid, shade=True)
    second = _pick(rng, lambda: _vivid(rng), np.vstack([avoid, [main]]))
    return Fill(main, pattern, second, float(rng.uniform(0.035, 0.07)))


def sample_look(style: str, rng: np.random.Generator, avoid: np.ndarray) -> CharacterLook:
    """A random look for a character of ``style``.

    Args:
        style: key of ``BODY_STYLES``.
        rng: the video's appearance stream.
        avoid: ``(k, 3)`` uint8 background colours that no character colour may come close to.

    Returns:
        The per-video look, with jittered proportions.
    """
    if style not in BODY_STYLES:
        raise ValueError(f"unknown body style {style!r}; choose one of {sorted(BODY_STYLES)}")
    proportions = jitter_proportions(BODY_STYLES[style], rng)
    outline = hsv_colour(rng.random(), rng.uniform(0.0, 0.6), rng.uniform(0.05, 0.22))
    eyes = hsv_colour(rng.random(), rng.uniform(0.0, 0.8), rng.uniform(0.05, 0.3))
    shoes = _pick(rng, lambda: _vivid(rng), avoid)
    if style == "human":
        skin = _pick(rng, lambda: _skin_tone(rng), avoid)
        accent = _pick(rng, lambda: _hair(rng), avoid)
        shirt, trousers = _fill(rng, avoid), _fill(rng, avoid)
        long_sleeves, long_trousers = rng.random() < 0.5, rng.random() < 0.7
        forearms = shirt if long_sleeves else Fill(skin, "solid", skin, 1.0)
        shins = trousers if long_trousers else Fill(skin, "solid", skin, 1.0)
        return CharacterLook(style, proportions, skin, shirt, shirt, forearms, trousers, shins, shoes, accent, eyes,
                             outline, int(rng.integers(1, 3)))  # fmt: skip
    if style == "teapot":
        glaze = _pick(rng, lambda: _vivid(rng), avoid, shade=True)
        accent = _pick(rng, lambda: _vivid(rng), avoid)
        body = _fill(rng, avoid, colour=glaze)
        limbs = Fill(glaze, "solid", glaze, 1.0)
        return CharacterLook(style, proportions, glaze, body, limbs, limbs, limbs, limbs, shoes, accent, eyes, outline,
                             int(rng.integers(1, 3)))  # fmt: skip
    fur = _pick(rng, lambda: _fur(rng), avoid, shade=True)
    accent = _pick(rng, lambda: _fox_accent(rng), avoid)
    fur_fill = Fill(fur, "solid", fur, 1.0)
    shirt = _fill(rng, avoid) if rng.random() < 0.6 else Fill(fur, "gradient", fur, 1.0)
    legs = _fill(rng, avoid) if rng.random() < 0.4 else fur_fill
    return CharacterLook(style, proportions, fur, shirt, shirt, fur_fill, legs, legs, shoes, accent, eyes, outline,
                         int(rng.integers(1, 3)))  # fmt: skip
