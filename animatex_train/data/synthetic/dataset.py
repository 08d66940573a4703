"""The embedded synthetic dataset: dancing cartoon characters (human, teapot, fox) with exact pose keypoints.

Each video is fully determined by its style, seed, length, frame rate and size: the seed is split into
independent streams for appearance, motion and keypoint dropout (``numpy.random.SeedSequence``), so changing a
dropout rate never changes the pixels. ``write_synthetic_dataset`` stores, per video, ``<name>.mp4`` (H.264,
yuv420p, single-threaded x264 so that the bytes do not depend on the machine's core count), ``<name>.pose.npy``
(the packed ``(t, 130, 2)`` keypoints of ``PoseSequence.to_array``) and a line of ``metadata.jsonl``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from animatex_train.data.format.keypoints import BODY, MISSING, PoseSequence
from animatex_train.data.format.video import write_mp4
from animatex_train.data.synthetic.characters import CharacterLook, hsv_colour, sample_look
from animatex_train.data.synthetic.drawing import draw_character
from animatex_train.data.synthetic.motion import DanceMotion, pose_character, sample_motion
from animatex_train.data.synthetic.proportions import BODY_STYLES

SOURCE = "animatex-train synthetic generator"
LICENCE = "CC0-1.0"
METADATA_FILE = "metadata.jsonl"
BACKGROUND_KINDS = ("flat", "vertical_gradient", "horizontal_gradient", "floor")
FACE_POINTS = tuple(BODY[name] for name in ("nose", "right_eye", "left_eye", "right_ear", "left_ear"))
EARS = (BODY["left_ear"], BODY["right_ear"])  # in ``PosedCharacter.ear_occluded`` order


@dataclass(frozen=True)
class ClipDesign:
    """What is fixed over one clip: the static background, the character's look and its dance.

    Attributes:
        background: ``(h, w, 3)`` uint8 RGB, identical in every frame (the camera does not move).
        look: the character's proportions and paint.
        motion: the dance curves and the character's placement.
    """

    background: np.ndarray
    look: CharacterLook
    motion: DanceMotion


def _light_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    # Backgrounds are pale and light, characters vivid or dark: see synthetic/characters.py MIN_CONTRAST.
    return hsv_colour(rng.random(), rng.uniform(0.0, 0.35), rng.uniform(0.6, 0.97))


def sample_background(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A random static background and the colours it is made of.

    Args:
        rng: the clip's appearance stream.
        size: ``(height, width)`` in pixels.

    Returns:
        ``(h, w, 3)`` uint8 RGB image, and ``(k, 3)`` uint8 colours that characters must contrast with.
    """
    height, width = size
    kind = BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))]
    top, bottom = np.asarray(_light_colour(rng), np.float64), np.asarray(_light_colour(rng), np.float64)
    blend = np.linspace(0.0, 1.0, 5)[:, None]
    palette = top + blend * (bottom - top)
    if kind == "flat":
        image, palette = np.broadcast_to(top, (height, width, 3)), top[None]
    elif kind == "vertical_gradient":
        rows = top + np.linspace(0.0, 1.0, height)[:, None] * (bottom - top)  # (h, 3)
        image = np.broadcast_to(rows[:, None], (height, width, 3))
    elif kind == "horizontal_gradient":
        columns = top + np.linspace(0.0, 1.0, width)[:, None] * (bottom - top)  # (w, 3)
        image = np.broadcast_to(columns[None], (height, width, 3))
    else:  # a wall over a floor, with a darker line where they meet; the feet stand below it
        horizon = int(rng.uniform(0.55, 0.8) * height)
        line = 0.85 * bottom
        image = np.empty((height, width, 3))
        image[:horizon], image[horizon:], image[horizon : horizon + max(1, height // 128)] = top, bottom, line
        palette = np.stack([top, bottom, line])
    return np.ascontiguousarray(np.round(image).astype(np.uint8)), np.round(palette).astype(np.uint8)


def _streams(seed: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """Independent appearance, motion and dropout generators for a clip seed."""
    appearance, motion, dropout = np.random.SeedSequence(seed).spawn(3)
    return np.random.default_rng(appearance), np.random.default_rng(motion), np.random.default_rng(dropout)


def _check_clip_arguments(style: str, seed: int, size: tuple[int, int]) -> None:
    if style not in BODY_STYLES:
        raise ValueError(f"unknown body style {style!r}; choose one of {sorted(BODY_STYLES)}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if len(size) != 2 or min(size) < 32:
        raise ValueError(f"size must be (height, width) with both at least 32 pixels, got {tuple(size)}")


def design_clip(style: str, seed: int, size: tuple[int, int]) -> ClipDesign:
    """Background, look and dance of the clip ``(style, seed)`` at ``size`` ``(height, width)``."""
    _check_clip_arguments(style, seed, size)
    appearance_rng, motion_rng, _ = _streams(seed)
    background, palette = sample_background(appearance_rng, size)
    look = sample_look(style, appearance_rng, palette)
    return ClipDesign(background, look, sample_motion(look.proportions, motion_rng, size))


def _dropout_frames(rng: np.random.Generator, num_frames: int, rate: float) -> np.ndarray:
    """``(t,)`` bool: runs of 1-4 frames where a part goes undetected, about ``rate`` of the frames in total.

    Runs rather than single frames, because a pose estimator loses a hand for a while, not for one frame.
    """
    hidden = np.zeros(num_frames, dtype=bool)
    target = int(rng.binomial(num_frames, rate))
    while hidden.sum() < target:
        start = int(rng.integers(num_frames))
        hidden[start : start + int(rng.integers(1, 5))] = True
    return hidden


def _normalise(points_px: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(..., 2)`` pixel positions to normalised float32; points off the frame become ``(-1, -1)``."""
    height, width = size
    inside = (
        (points_px[..., 0] >= 0)
        & (points_px[..., 0] <= width - 1)
        & (points_px[..., 1] >= 0)
        & (points_px[..., 1] <= height - 1)
    )
    normalised = (points_px / np.array([width, height], dtype=np.float64)).astype(np.float32)
    normalised[~inside] = MISSING
    return normalised


def render_clip(
    style: str,
    seed: int,
    num_frames: int,
    size: tuple[int, int],
    fps: float = 8.0,
    hand_hide_rate: float = 0.0,
    face_hide_rate: float = 0.0,
) -> tuple[np.ndarray, PoseSequence]:
    """Render one dancing character and its ground-truth keypoints.

    Args:
        style: body style, a key of ``synthetic/proportions.py`` ``BODY_STYLES`` (``human``, ``teapot``, ``fox``).
        seed: non-negative clip seed; the same arguments always give the same pixels and keypoints.
        num_frames: number of frames ``t``.
        size: ``(height, width)`` in pixels.
        fps: frame rate the dance is sampled at (the motion is defined in seconds).
        hand_hide_rate: fraction of frames in which each hand's 21 points are dropped, as a pose estimator
            would miss them.
        face_hide_rate: fraction of frames in which the nose, eyes and ears are dropped.

    Returns:
        ``(t, h, w, 3)`` uint8 RGB frames, and the keypoints: ``x / w`` and ``y / h`` with pixel centres at
        integer ``x, y`` (so pixel ``round(k * (w, h))`` lies on the keypoint ``k``); ``(-1, -1)`` for points off
        the frame, dropped, or on an ear turned away from the camera; no 68-point face.
    """
    if num_frames < 1 or fps <= 0:
        raise ValueError(f"num_frames must be >= 1 and fps > 0, got num_frames={num_frames}, fps={fps}")
    for name, rate in (("hand_hide_rate", hand_hide_rate), ("face_hide_rate", face_hide_rate)):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {rate}")
    design = design_clip(style, seed, size)
    _, _, dropout_rng = _streams(seed)
    posed = pose_character(design.look.proportions, design.motion, num_frames, fps)
    frames = np.empty((num_frames, *design.background.shape), dtype=np.uint8)
    for index in range(num_frames):
        frames[index] = design.background
        draw_character(frames[index], posed, index, design.look)

    body, feet, hands = _normalise(posed.body, size), _normalise(posed.feet, size), _normalise(posed.hands, size)
    for side, ear in enumerate(EARS):
        body[posed.ear_occluded[:, side], ear] = MISSING
    body[np.ix_(_dropout_frames(dropout_rng, num_frames, face_hide_rate), FACE_POINTS)] = MISSING
    for hand in range(2):
        hands[_dropout_frames(dropout_rng, num_frames, hand_hide_rate), hand] = MISSING
    return frames, PoseSequence(body=body, feet=feet, hands=hands, face=None, frame_size=(size[0], size[1]))


@dataclass(frozen=True)
class SyntheticDatasetConfig:
    """What ``write_synthetic_dataset`` generates.

    Attributes:
        num_videos: number of videos.
        num_val_videos: how many of them form the validation split: the last ones, so that with styles cycled
            and ``num_val_videos == len(styles)`` every style appears once in validation.
        styles: body styles, cycled over the videos (repeat a name to give it more videos).
        num_frames: frames per video.
        fps: frame rate of the videos and of the dance sampling.
        height_px: frame height; even, as yuv420p needs.
        width_px: frame width; even, as yuv420p needs.
        seed: dataset seed; video ``i``'s clip seed is derived from ``(seed, i)`` and stored in the metadata.
        hand_hide_rate: fraction of frames where each hand's keypoints are dropped (see ``render_clip``).
        face_hide_rate: fraction of frames where the face keypoints are dropped.
        name_prefix: videos are named ``<name_prefix>_<index:04d>``.
        crf: x264 constant rate factor (lower = larger files, fewer artefacts).
    """

    num_videos: int = 15
    num_val_videos: int = 3
    styles: tuple[str, ...] = ("human", "teapot", "fox")
    num_frames: int = 56
    fps: int = 8
    height_px: int = 256
    width_px: int = 192
    seed: int = 0
    hand_hide_rate: float = 0.05
    face_hide_rate: float = 0.03
    name_prefix: str = "synth"
    crf: int = 23

    def __post_init__(self) -> None:
        object.__setattr__(self, "styles", tuple(self.styles))
        if self.num_videos < 1:
            raise ValueError(f"num_videos must be >= 1, got {self.num_videos}")
        if not 0 <= self.num_val_videos < self.num_videos:
            raise ValueError(
                f"num_val_videos must lie in [0, num_videos) = [0, {self.num_videos}), got {self.num_val_videos}; "
                "lower num_val_videos or raise num_videos"
            )
        unknown = [style for style in self.styles if style not in BODY_STYLES]
        if not self.styles or unknown:
            raise ValueError(f"styles must be a non-empty list drawn from {sorted(BODY_STYLES)}, got {self.styles}")
        if self.num_frames < 1 or self.fps < 1:
            raise ValueError(f"num_frames and fps must be >= 1, got {self.num_frames} and {self.fps}")
        if self.height_px < 32 or self.width_px < 32 or self.height_px % 2 or self.width_px % 2:
            raise ValueError(
                f"height_px and width_px must be even and at least 32 (yuv420p halves them for chroma), got "
                f"{self.height_px}x{self.width_px}"
            )
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not (0.0 <= self.hand_hide_rate <= 1.0 and 0.0 <= self.face_hide_rate <= 1.0):
            raise ValueError(f"hide rates must lie in [0, 1], got {self.hand_hide_rate} and {self.face_hide_rate}")
        if not self.name_prefix or not self.name_prefix.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"name_prefix must be letters, digits, '_' or '-', got {self.name_prefix!r}")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"crf must lie in [0, 51] (x264's range), got {self.crf}")

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> SyntheticDatasetConfig:
        """Build from a mapping, rejecting unknown keys (a typo must not silently fall back to a default)."""
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown keys {unknown}; valid keys are {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: Path) -> SyntheticDatasetConfig:
        """Read a values-only YAML file such as ``data/embedded_dataset.yaml``."""
        values = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of config keys to values, got {type(values).__name__}")
        return cls.from_dict(values, source=str(path))

    def video_name(self, index: int) -> str:
        return f"{self.name_prefix}_{index:04d}"

    def video_seed(self, index: int) -> int:
        """Clip seed of video ``index``: hashed from ``(seed, index)`` so that nearby seeds do not share clips."""
        return int(np.random.SeedSequence([self.seed, index]).generate_state(1, np.uint32)[0])


def write_synthetic_dataset(out_dir: Path, config: SyntheticDatasetConfig) -> list[Path]:
    """Render and write the dataset into ``out_dir`` (created if needed; existing files are overwritten).

    Args:
        out_dir: destination folder.
        config: what to generate.

    ``metadata.jsonl`` has one line per video: ``video``, ``split`` (``train``/``val``), ``source``, ``licence``
    and ``style``. A video is re-rendered with ``render_clip(style, config.video_seed(index), ...)``.

    Returns:
        Paths of the written videos, in index order; each has a ``<name>.pose.npy`` sidecar next to it and a
        line in ``out_dir / metadata.jsonl``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    size = (config.height_px, config.width_px)
    videos, records = [], []
    for index in range(config.num_videos):
        name, seed = config.video_name(index), config.video_seed(index)
        style = config.styles[index % len(config.styles)]
        frames, pose = render_clip(
            style, seed, config.num_frames, size, config.fps, config.hand_hide_rate, config.face_hide_rate
        )
        write_mp4(out_dir / f"{name}.mp4", frames, config.fps, config.crf)
        np.save(out_dir / f"{name}.pose.npy", pose.to_array(), allow_pickle=False)
        split = "val" if index >= config.num_videos - config.num_val_videos else "train"
        # The style travels in `source` (free text): the metadata schema has video/split/source/licence only.
        records.append(
            {"video": f"{name}.mp4", "split": split, "source": f"{SOURCE} (style: {style})", "licence": LICENCE}
        )
        videos.append(out_dir / f"{name}.mp4")
    (out_dir / METADATA_FILE).write_text("".join(json.dumps(record) + "\n" for record in records))
    return videos
