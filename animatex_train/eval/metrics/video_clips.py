"""The clips FID-VID and FVD are computed on, and their preprocessing, as DisCo builds them
(tool/metrics/utils.py:346-521, resize.py): PIL bicubic float resize per channel (no crop, no clip, no rounding),
then ``x - Kinetics mean`` (3D ResNet-50) or ``x / 127.5 - 1`` (I3D).

Two clip protocols (recipe key ``clip_mode``):
  * ``sliding`` (DisCo's frame folders, gen_eval.sh): every frame starts a window of it and the next 15 frames of
    the same video, stride 1; videos shorter than 16 frames give none.
  * ``whole`` (DisCo's per-clip video files, gen_eval_tm.sh): one sample per video; FID-VID averages the features
    of its 16-frame segments (the last frame repeated to fill the last one), FVD gives I3D the whole clip.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

import numpy as np
import torch
from PIL import Image

ClipMode = Literal["sliding", "whole"]
WINDOW_FRAMES = 16
FID_VID_SIZE_PX = 112
FVD_SIZE_PX = 224
KINETICS_MEAN_255 = (114.7748, 107.7354, 99.4750)  # RGB, 0-255 scale (DisCo utils.py; no std division)

# DisCo's recognised frame names (utils.py DatasetFVDVideoFromFramesResize): (prefix, index, suffix); other names
# are skipped with a message, exactly as DisCo does.
DISCO_FRAME_PATTERNS = (
    re.compile(r"^(TiktokDance_\d+_)(\d+)(\D*\.\w+)$"),
    re.compile(r"^(TiktokDance_\d+_\d+_1x1_)(\d+)(\D*\.\w+)$"),
    re.compile(r"^(\d+_\d+_1x1__)(\d+)(.\D*\.\w+)$"),
    re.compile(r"^(S\d{3}C\d{3}P\d{3}R\d{3}A\d{3}_)(\d{4})(\D*\.\w+)$"),
)


def disco_folder_windows(names: Iterable[str], length: int = WINDOW_FRAMES) -> tuple[list[list[str]], list[str]]:
    """DisCo's stride-1 windows over a flat folder of frame files.

    For every name (in sorted order) matching a DisCo pattern, the window is that frame and the ``length - 1``
    names with the index incremented (zero-padded to the same width); a window with a missing name is dropped.

    Returns:
        (windows, skipped): the windows (lists of names) in DisCo's order, and a message per unrecognised name.
    """
    present = set(names)
    windows, skipped = [], []
    for name in sorted(present):
        match = next((m for m in (p.match(name) for p in DISCO_FRAME_PATTERNS) if m), None)
        if match is None:
            skipped.append(f"Frame name '{name}' does not match any format")
            continue
        prefix, index, suffix = match.groups()
        window = [prefix + str(int(index) + i).zfill(len(index)) + suffix for i in range(length)]
        if all(frame in present for frame in window):
            windows.append(window)
    return windows, skipped


def resize_bicubic_float(frame: np.ndarray, size_px: int) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> ``(size, size, 3)`` float32: each channel as a PIL float ("F") image, bicubic
    (antialiased when shrinking), no clipping or rounding: DisCo's ``make_resizer("PIL", False, "bicubic")``.
    PIL itself rather than torch's antialiased bicubic, which differs by up to ~2e-3 on 0-255 values."""
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(frame[..., c], dtype=np.float32)).resize(
                (size_px, size_px), Image.Resampling.BICUBIC
            )
        )
        for c in range(3)
    ]
    return np.stack(channels, axis=-1)


def normalise_fid_vid(frames: np.ndarray) -> torch.Tensor:
    """``(f, S, S, 3)`` resized float32 -> ``(3, f, S, S)`` float32 minus the Kinetics mean (computed in float64,
    then cast, as DisCo's float64 mean tensor does)."""
    x = torch.from_numpy(frames).double() - torch.tensor(KINETICS_MEAN_255, dtype=torch.float64)
    return x.float().permute(3, 0, 1, 2).contiguous()


def normalise_fvd(frames: np.ndarray) -> torch.Tensor:
    """``(f, S, S, 3)`` resized float32 -> ``(3, f, S, S)`` in ``[-1, 1]`` (unclipped): ``x / 127.5 - 1``."""
    return (torch.from_numpy(frames) / 127.5 - 1).permute(3, 0, 1, 2).contiguous()


def sliding_windows(frames: Iterable[np.ndarray], length: int = WINDOW_FRAMES) -> Iterator[np.ndarray]:
    """Stride-1 windows ``(length, ...)`` over a stream of already resized frames, each frame resized once and
    at most ``length`` kept in memory."""
    window: deque[np.ndarray] = deque(maxlen=length)
    for frame in frames:
        window.append(frame)
        if len(window) == length:
            yield np.stack(window)


def whole_clip_segments(frames: Sequence[np.ndarray], length: int = WINDOW_FRAMES) -> np.ndarray:
    """``(n_segments, length, ...)``: a whole clip cut into ``length``-frame segments, the last frame repeated to
    fill the last one (DisCo utils.py:402-411, FID-VID on video files)."""
    clip = np.stack(frames)
    pad = (-len(clip)) % length
    if pad:
        clip = np.concatenate([clip, np.repeat(clip[-1:], pad, axis=0)])
    return clip.reshape(-1, length, *clip.shape[1:])
