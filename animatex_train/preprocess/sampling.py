"""Which source frames become which clips, and the resize + center-crop geometry (frames and keypoints).

All choices are deterministic functions of the video's header and the config, so a rerun, a resumed
run or another rank makes exactly the same clips.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import cv2
import numpy as np

from animatex_train.data.format.keypoints import MISSING
from animatex_train.preprocess import rejects
from animatex_train.preprocess.rejects import VideoRejected
from animatex_train.preprocess.video import VideoInfo

# Two frame rates closer than this (relative) are the same rate: 29.97 given as 29.97 vs 30000/1001.
_SAME_RATE = 1e-4


def output_fps(info: VideoInfo, fps: float | None) -> Fraction:
    """The frame rate of the stored frames: ``fps`` if given, else the source's nominal rate."""
    if fps is None:
        return info.fps
    return Fraction(str(fps))  # str(): 29.97 means 2997/100, not the binary float's expansion


def source_indices(info: VideoInfo, fps: float | None, vfr_policy: str) -> np.ndarray:
    """The source frame index of every output frame after frame-rate resampling.

    Constant frame rate: output frame ``k`` is source frame ``floor(k * source_fps / fps)``, the frame
    on screen at time ``k / fps`` (exact rational arithmetic, so no rounding drift over long videos).
    Variable frame rate: rejected, or with ``vfr_policy == "timestamps"`` output frame ``k`` is the last
    source frame whose timestamp is at or before ``k / fps`` (a slow stretch repeats a frame).

    Args:
        info: the probed video.
        fps: the output frame rate; None keeps the source rate (every frame of a constant-rate video).
        vfr_policy: ``"reject"`` or ``"timestamps"``.

    Returns:
        ``(n,)`` int64 source frame indices, non-decreasing.

    Raises:
        VideoRejected: variable frame rate under ``"reject"``, or a source rate below ``fps``.
    """
    target = output_fps(info, fps)
    if info.variable_frame_rate:
        if vfr_policy != "timestamps":
            steps = np.diff(info.frame_times)
            raise VideoRejected(
                rejects.VARIABLE_FRAME_RATE,
                f"frame durations vary from {steps.min() * 1e3:.2f} to {steps.max() * 1e3:.2f} ms; set "
                "clips.vfr_policy=timestamps to sample it by timestamp, or re-encode at a constant rate",
            )
        count = int(math.floor(info.frame_times[-1] * target)) + 1
        times = np.arange(count, dtype=np.float64) / float(target)
        # A tolerance of 1 us absorbs the float rounding of tick -> seconds conversions.
        return (np.searchsorted(info.frame_times, times + 1e-6, side="right") - 1).astype(np.int64)
    if abs(target - info.fps) <= _SAME_RATE * info.fps:
        return np.arange(info.num_frames, dtype=np.int64)
    if target > info.fps:
        raise VideoRejected(
            rejects.FPS_TOO_LOW,
            f"source rate {float(info.fps):.3f} fps is below clips.fps={float(target):.3f}; frames would repeat",
        )
    ratio = info.fps / target  # source frames per output frame, > 1
    count = int(math.floor((info.num_frames - 1) / ratio)) + 1
    return np.array([math.floor(k * ratio) for k in range(count)], dtype=np.int64)


def clip_starts(num_frames_available: int, num_frames: int, stride: int, max_clips: int | None) -> list[int]:
    """Start positions (in output frames) of the clips of one video.

    Clips are windows of ``num_frames`` output frames starting every ``stride`` frames; a tail shorter than
    a clip is left out. With ``max_clips``, that many starts are taken evenly spread over the video
    (first and last included), so a long video contributes varied clips rather than its opening.

    Raises:
        VideoRejected: the video is shorter than one clip.
    """
    if num_frames_available < num_frames:
        raise VideoRejected(
            rejects.TOO_SHORT, f"{num_frames_available} frames after resampling, a clip needs {num_frames}"
        )
    starts = list(range(0, num_frames_available - num_frames + 1, stride))
    if max_clips is not None and len(starts) > max_clips:
        picks = np.round(np.linspace(0, len(starts) - 1, max_clips)).astype(np.int64)
        starts = [starts[i] for i in picks]
    return starts


def choose_resolution(frame_size: tuple[int, int], resolutions: list[tuple[int, int]]) -> tuple[int, int]:
    """The ``(height, width)`` bucket whose aspect ratio is closest (in log ratio) to the frame's; ties -> first."""
    aspect = math.log(frame_size[1] / frame_size[0])
    distances = [abs(math.log(w / h) - aspect) for h, w in resolutions]
    return resolutions[int(np.argmin(distances))]


@dataclass(frozen=True)
class CropGeometry:
    """Resize (keeping the aspect ratio) so the target is covered, then crop the center.

    Attributes:
        source_size: ``(height, width)`` of the source frames.
        target_size: ``(height, width)`` of the output frames.
        resized_size: ``(height, width)`` after the resize, each at least the target's.
        offset: ``(y, x)`` of the crop's top-left corner in the resized frame.
    """

    source_size: tuple[int, int]
    target_size: tuple[int, int]
    resized_size: tuple[int, int]
    offset: tuple[int, int]

    @classmethod
    def fit(cls, source_size: tuple[int, int], target_size: tuple[int, int]) -> CropGeometry:
        (src_h, src_w), (dst_h, dst_w) = source_size, target_size
        scale = max(dst_h / src_h, dst_w / src_w)
        resized = (max(dst_h, round(src_h * scale)), max(dst_w, round(src_w * scale)))
        offset = ((resized[0] - dst_h) // 2, (resized[1] - dst_w) // 2)
        return cls(source_size=source_size, target_size=target_size, resized_size=resized, offset=offset)

    def apply(self, frame: np.ndarray) -> np.ndarray:
        """``(src_h, src_w, 3)`` uint8 -> ``(dst_h, dst_w, 3)`` uint8."""
        if frame.shape[:2] != self.source_size:
            raise ValueError(f"frame of size {frame.shape[:2]} given to a crop for {self.source_size}")
        (rh, rw), (oy, ox), (th, tw) = self.resized_size, self.offset, self.target_size
        if (rh, rw) != self.source_size:
            # INTER_AREA averages when shrinking (no aliasing); bicubic when enlarging.
            shrinking = rh < self.source_size[0]
            frame = cv2.resize(frame, (rw, rh), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
        return np.ascontiguousarray(frame[oy : oy + th, ox : ox + tw])

    def transform_points(self, points: np.ndarray) -> np.ndarray:
        """Map keypoints normalised to the source frame onto the output frame.

        Coordinates are continuous (the image spans ``[0, width]``), under which a resize is a pure scale.
        Points that fall outside the crop become missing ``(-1, -1)``, as the keypoint format requires.

        Args:
            points: ``(..., 2)`` float, ``(x / src_w, y / src_h)``, missing points ``(-1, -1)``.

        Returns:
            ``(..., 2)`` float32, normalised to the output frame.
        """
        points = np.asarray(points, dtype=np.float64)
        present = ~np.all(points == MISSING, axis=-1)
        (rh, rw), (oy, ox), (th, tw) = self.resized_size, self.offset, self.target_size
        x = (points[..., 0] * rw - ox) / tw
        y = (points[..., 1] * rh - oy) / th
        inside = present & (x >= 0.0) & (x <= 1.0) & (y >= 0.0) & (y <= 1.0)
        out = np.stack([np.where(inside, x, MISSING), np.where(inside, y, MISSING)], axis=-1)
        return out.astype(np.float32)


@dataclass(frozen=True)
class VideoPlan:
    """Every clip of one video: what to decode and how to store it.

    Attributes:
        info: the probed video.
        fps: frame rate of the stored frames.
        clips: per clip, ``(num_frames,)`` int64 source frame indices.
        clip_indices: per clip, its index within the video (window number, stable under ``max_clips``).
        resolution: ``(height, width)`` of the stored frames (the chosen bucket).
        geometry: the resize + center crop from source to ``resolution``.
    """

    info: VideoInfo
    fps: Fraction
    clips: list[np.ndarray]
    clip_indices: list[int]
    resolution: tuple[int, int]
    geometry: CropGeometry

    @property
    def needed_frames(self) -> np.ndarray:
        """Sorted unique source frame indices over all clips."""
        return np.unique(np.concatenate(self.clips))


def plan_video(
    info: VideoInfo,
    *,
    num_frames: int,
    stride: int,
    fps: float | None,
    vfr_policy: str,
    max_clips: int | None,
    resolutions: list[tuple[int, int]],
) -> VideoPlan:
    """Resample, cut into clips and pick the resolution bucket of one video (deterministic).

    Raises:
        VideoRejected: variable frame rate (under ``reject``), a too-low source rate, or too few frames.
    """
    indices = source_indices(info, fps, vfr_policy)
    starts = clip_starts(len(indices), num_frames, stride, max_clips)
    resolution = choose_resolution(info.frame_size, resolutions)
    return VideoPlan(
        info=info,
        fps=output_fps(info, fps),
        clips=[indices[start : start + num_frames] for start in starts],
        clip_indices=[start // stride for start in starts],
        resolution=resolution,
        geometry=CropGeometry.fit(info.frame_size, resolution),
    )
