"""Which source frames drive which generated frames, and at what output rate.

Frames are chosen by timestamp: generated frame k shows the source frame on screen at ``start + k * stride /
source_fps`` (the last frame whose timestamp is at or before it), which is the plain index arithmetic
``first + k * stride`` for a constant-rate video and stays correct for a variable-rate one.

A clip shorter than the request never fails (the official loader raises IndexError, issue #24): the stride is
lowered to the largest one that still fits, and when even stride 1 is too short the last frame is held
(its pose repeats), each with a warning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from animatex_train.preprocess.video import VideoInfo


@dataclass(frozen=True)
class FramePlan:
    """The source frames of one animation.

    Attributes:
        indices: ``(n,)`` int64 source frame index of every generated frame (held frames repeat the last).
        stride: the stride used (may be lower than requested).
        requested_stride: the stride asked for.
        held: how many trailing generated frames hold the last source frame.
        source_fps: the video's nominal rate.
        fps: the output rate.
        start_time: seconds of the first used frame.
        end_time: seconds where the used range ends (the audio to mux is ``[start_time, end_time)``).
        warnings: what was changed to make the request fit.
    """

    indices: np.ndarray
    stride: int
    requested_stride: int
    held: int
    source_fps: Fraction
    fps: Fraction
    start_time: float
    end_time: float
    warnings: list[str] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return int(self.indices.shape[0])

    @property
    def duration(self) -> float:
        """Seconds of the output video."""
        return self.num_frames / float(self.fps)

    def unique_indices(self) -> np.ndarray:
        """Sorted unique source frames to decode."""
        return np.unique(self.indices)


def choose_stride(source_fps: Fraction, stride: int | None, target_fps: float | None) -> int:
    """``stride``, or round(source fps / target fps) (at least 1), or 1."""
    if stride is not None:
        return int(stride)
    if target_fps is not None:
        return max(1, round(float(source_fps) / float(target_fps)))
    return 1


def plan_frames(
    info: VideoInfo,
    *,
    stride: int | None = None,
    target_fps: float | None = None,
    start: float = 0.0,
    frames: int | None = None,
    fps: float | None = None,
) -> FramePlan:
    """Choose the source frames for ``frames`` generated frames (None = all from ``start``).

    Args:
        info: the probed driving video.
        stride: take every ``stride``-th frame.
        target_fps: choose the stride from this output rate instead.
        start: seconds to skip.
        frames: generated frames; None = as many as the video holds at the stride.
        fps: output rate; None = source fps / stride used.

    Returns:
        The plan; ``plan.warnings`` lists any change made to fit a short clip.

    Raises:
        ValueError: ``start`` is at or beyond the end of the video.
    """
    times = np.asarray(info.frame_times, dtype=np.float64)
    first = int(np.searchsorted(times, start - 1e-6, side="left"))
    if first >= info.num_frames:
        raise ValueError(
            f"--start: {start} s is beyond the driving video's last frame at {times[-1]:.3f} s; "
            "choose a smaller --start"
        )
    requested = choose_stride(info.fps, stride, target_fps)
    frame_step = 1.0 / float(info.fps)
    # Frames available from `first`, measured in nominal frame steps (exact for constant-rate videos).
    available = int(math.floor((times[-1] - times[first]) / frame_step + 1e-6)) + 1
    warnings: list[str] = []
    used = requested
    if frames is None:
        count = (available - 1) // used + 1
    else:
        count = int(frames)
        if (count - 1) * used + 1 > available:
            lowered = max(1, (available - 1) // max(1, count - 1))
            if lowered != used:
                warnings.append(
                    f"the driving video has {available} frames from {start:g} s, fewer than {count} "
                    f"frames at stride {used} need; using stride {lowered}"
                )
            used = lowered
    real = min(count, (available - 1) // used + 1)
    held = count - real
    if held:
        warnings.append(
            f"the driving video is too short for {count} frames even at stride 1: the last pose is held "
            f"for the final {held} frame(s); pass --frames {real} to avoid it"
        )
    targets = times[first] + np.arange(real, dtype=np.float64) * used * frame_step
    # Last frame shown at or before each target time (1 us absorbs tick -> seconds rounding).
    indices = np.searchsorted(times, targets + 1e-6, side="right") - 1
    indices = np.concatenate([indices, np.full(held, indices[-1])]).astype(np.int64)
    out_fps = Fraction(info.fps) / used if fps is None else Fraction(str(fps))
    return FramePlan(
        indices=indices,
        stride=used,
        requested_stride=requested,
        held=held,
        source_fps=Fraction(info.fps),
        fps=out_fps,
        start_time=float(times[first]),
        end_time=float(times[first] + real * used * frame_step),
        warnings=warnings,
    )
