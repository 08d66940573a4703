"""Writing sample clips: an H.264 mp4 (PyAV) and a PNG strip, laid out side by side per frame."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image


def match_height(clip: np.ndarray, height: int) -> np.ndarray:
    """Resize ``(f, H, W, 3)`` frames to ``height``, keeping the aspect ratio."""
    if clip.shape[1] == height:
        return clip
    width = round(clip.shape[2] * height / clip.shape[1])
    return np.stack([np.asarray(Image.fromarray(frame).resize((width, height))) for frame in clip])


def side_by_side(*columns: np.ndarray) -> np.ndarray:
    """Concatenate ``(f, H, W, 3)`` uint8 clips horizontally (each resized to the first one's height)."""
    return np.concatenate([match_height(clip, columns[0].shape[1]) for clip in columns], axis=2)


def write_mp4(path: str | Path, frames: np.ndarray, fps: float = 8.0) -> Path:
    """``(f, H, W, 3)`` uint8 -> H.264 mp4 (dimensions padded to even sizes, as yuv420p needs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    f, h, w, _ = frames.shape
    padded = np.zeros((f, h + h % 2, w + w % 2, 3), dtype=np.uint8)
    padded[:, :h, :w] = frames
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = padded.shape[2], padded.shape[1], "yuv420p"
        stream.options = {"crf": "18", "preset": "fast"}
        for frame in padded:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_strip(path: str | Path, rows: list[np.ndarray], num_frames: int = 4) -> Path:
    """A PNG grid: one row per clip in ``rows`` (each ``(f, H, W, 3)``), ``num_frames`` evenly spaced columns."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    f = min(clip.shape[0] for clip in rows)
    picks = np.linspace(0, f - 1, num=min(num_frames, f)).round().astype(int)
    rows = [match_height(clip, rows[0].shape[1]) for clip in rows]
    grid = np.concatenate([np.concatenate(list(clip[picks]), axis=1) for clip in rows], axis=0)
    Image.fromarray(grid).save(path)
    return path
