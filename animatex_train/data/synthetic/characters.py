"""The look of a synthetic character: colours and patterns per video, kept apart from the background's colours.

The body shapes per style are ``synthetic/proportions.py``.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from animatex_train.data.synthetic.proportions import BODY_STYLES, BodyProportions, jitter_proportions

Colour = tuple[int, int, int]
PATTERNS = ("solid", "stripes", "checks", "dots", "gradient")
# Darkest shade a gradient fill reaches (fraction of the base colour); the contrast check covers it.
GRADIENT_DARKEST = 0.72
# Smallest per-channel difference between any character colour and any background colour, so that every
# keypoint lies on pixels that are clearly not background (the tests check exactly this).
MIN_CONTRAST = 64


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
        return CharacterLook(
            style,
            proportions,
            skin,
            shirt,
            shirt,
            forearms,
            trousers,
            shins,
            shoes,
            accent,
            eyes,
            outline,
            int(rng.integers(1, 3)),
        )
    if style == "teapot":
        glaze = _pick(rng, lambda: _vivid(rng), avoid, shade=True)
        accent = _pick(rng, lambda: _vivid(rng), avoid)
        body = _fill(rng, avoid, colour=glaze)
        limbs = Fill(glaze, "solid", glaze, 1.0)
        return CharacterLook(
            style,
            proportions,
            glaze,
            body,
            limbs,
            limbs,
            limbs,
            limbs,
            shoes,
            accent,
            eyes,
            outline,
            int(rng.integers(1, 3)),
        )
    fur = _pick(rng, lambda: _fur(rng), avoid, shade=True)
    accent = _pick(rng, lambda: _fox_accent(rng), avoid)
    fur_fill = Fill(fur, "solid", fur, 1.0)
    shirt = _fill(rng, avoid) if rng.random() < 0.6 else Fill(fur, "gradient", fur, 1.0)
    legs = _fill(rng, avoid) if rng.random() < 0.4 else fur_fill
    return CharacterLook(
        style,
        proportions,
        fur,
        shirt,
        shirt,
        fur_fill,
        legs,
        legs,
        shoes,
        accent,
        eyes,
        outline,
        int(rng.integers(1, 3)),
    )
