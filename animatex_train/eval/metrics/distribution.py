"""The distribution metrics' feature streams: FID (pytorch-fid Inception on single frames, batched as pytorch-fid
batches a folder) and FID-VID / FVD (3D networks on DisCo's 16-frame clips). Each keeps only feature statistics
and a bounded buffer of inputs, never a whole set of frames."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from animatex_train.eval.metrics.frechet import FeatureStats
from animatex_train.eval.metrics.video_clips import (
    FID_VID_SIZE_PX,
    FVD_SIZE_PX,
    WINDOW_FRAMES,
    ClipMode,
    normalise_fid_vid,
    normalise_fvd,
    resize_bicubic_float,
    sliding_windows,
    whole_clip_segments,
)

Side = Literal["gen", "real"]


class FrameFeatureStream:
    """FID features: frames are buffered up to ``batch_size`` (pytorch-fid's CLI default is 50) and run through the
    network together; a frame of another size flushes the buffer first (a batch needs one size).

    Args:
        network: ``(b, H, W, 3)`` uint8 -> ``(b, d)`` features.
        batch_size: frames per forward.
    """

    def __init__(self, network: nn.Module, batch_size: int = 50) -> None:
        self.network, self.batch_size = network, batch_size
        self.stats = {"gen": FeatureStats(), "real": FeatureStats()}
        self._pending: dict[str, list[np.ndarray]] = {"gen": [], "real": []}

    def add(self, side: Side, frame: np.ndarray) -> None:
        pending = self._pending[side]
        if pending and pending[0].shape != frame.shape:
            self.flush(side)
        pending.append(frame)
        if len(pending) == self.batch_size:
            self.flush(side)

    def flush(self, side: Side) -> None:
        pending = self._pending[side]
        if pending:
            self.stats[side].update(self.network(torch.from_numpy(np.stack(pending))).double())
            pending.clear()


class ClipFeatureStream:
    """FID-VID or FVD features of one video at a time, in DisCo's clip protocol.

    Args:
        network: ``(b, 3, f, S, S)`` -> ``(b, d)`` features.
        kind: ``fid_vid`` (3D ResNet-50, 112 px, Kinetics mean) or ``fvd`` (I3D, 224 px, ``[-1, 1]``).
        clip_mode: ``sliding`` (every stride-1 16-frame window is a sample) or ``whole`` (one sample per video).
        batch_size: windows per forward (DisCo uses 1; batching changes only float rounding).
    """

    def __init__(
        self, network: nn.Module, kind: Literal["fid_vid", "fvd"], clip_mode: ClipMode = "sliding", batch_size: int = 4
    ) -> None:
        if clip_mode not in ("sliding", "whole"):
            raise ValueError(f"clip_mode: expected 'sliding' or 'whole', got {clip_mode!r}")
        self.network, self.kind, self.clip_mode, self.batch_size = network, kind, clip_mode, batch_size
        self.size_px = FID_VID_SIZE_PX if kind == "fid_vid" else FVD_SIZE_PX
        self.normalise = normalise_fid_vid if kind == "fid_vid" else normalise_fvd
        self.stats = {"gen": FeatureStats(), "real": FeatureStats()}
        self.num_frames_skipped = {"gen": 0, "real": 0}  # frames of videos too short for one window

    def _features(self, clips: list[torch.Tensor]) -> torch.Tensor:
        device = next(self.network.parameters()).device
        with torch.no_grad():
            return self.network(torch.stack(clips).to(device)).double().cpu()

    def add_video(self, side: Side, frames: Sequence[np.ndarray]) -> int:
        """Score one video's ``(H, W, 3)`` uint8 frames; returns the number of samples it gave."""
        resized = (resize_bicubic_float(frame, self.size_px) for frame in frames)
        if self.clip_mode == "whole":
            return self._add_whole(side, list(resized))
        batch, count = [], 0
        for window in sliding_windows(resized, WINDOW_FRAMES):
            batch.append(self.normalise(window))
            if len(batch) == self.batch_size:
                self.stats[side].update(self._features(batch))
                count, batch = count + len(batch), []
        if batch:
            self.stats[side].update(self._features(batch))
            count += len(batch)
        if count == 0:
            self.num_frames_skipped[side] += len(frames)
        return count

    def add_window(self, side: Side, frames: Sequence[np.ndarray]) -> None:
        """One ready-made 16-frame window (DisCo's frame-folder samples, ``video_clips.disco_folder_windows``)."""
        clip = np.stack([resize_bicubic_float(frame, self.size_px) for frame in frames])
        self.stats[side].update(self._features([self.normalise(clip)]))

    def _add_whole(self, side: Side, frames: list[np.ndarray]) -> int:
        if not frames:
            return 0
        if self.kind == "fvd":  # the whole clip is one I3D input (DisCo utils.py:412-418)
            feature = self._features([self.normalise(np.stack(frames))])
        else:  # 16-frame segments, features averaged to one vector per video (DisCo metric_center.py:470-482)
            segments = [self.normalise(segment) for segment in whole_clip_segments(frames, WINDOW_FRAMES)]
            feature = torch.cat(
                [self._features(segments[i : i + self.batch_size]) for i in range(0, len(segments), self.batch_size)]
            ).mean(0, keepdim=True)
        self.stats[side].update(feature)
        return 1
