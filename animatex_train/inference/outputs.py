"""Writing an animation: the mp4 (with the driving audio of the used range), optional poses and frames, and
``<name>.meta.json``.

Every file is written under a temporary name and renamed, and the meta file comes last: an output whose meta
file says ``"status": "ok"`` is complete, which is what a rerun of a manifest skips on.
"""

from __future__ import annotations

import json
import logging
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from animatex_train.data.format.video import side_by_side, write_mp4

log = logging.getLogger(__name__)
AUDIO_RATE_TOLERANCE = 1e-3  # relative: output fps this close to source fps / stride keeps the audio in sync


def meta_path(output: str | Path) -> Path:
    """``out.mp4`` -> ``out.meta.json``."""
    output = Path(output)
    return output.with_name(output.stem + ".meta.json")


def is_complete(output: str | Path) -> bool:
    """Whether ``output`` and its meta file exist and the meta file records a finished render."""
    path = meta_path(output)
    if not Path(output).is_file() or not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("status") == "ok"
    except (OSError, json.JSONDecodeError):
        return False


def compose(
    layout: str, result: np.ndarray, reference: np.ndarray, poses: np.ndarray, source: np.ndarray
) -> np.ndarray:
    """The frames of ``layout``: ``result``, ``ref-pose-result`` (the released 3 columns) or ``+ source``."""
    if layout == "result":
        return result
    columns = [np.broadcast_to(reference, result.shape), poses, result]
    if layout == "ref-pose-result-source":
        columns.append(source)
    return side_by_side(*[np.ascontiguousarray(c) for c in columns])


def _audio_samples(source: Path, start: float, end: float) -> tuple[np.ndarray, int, str] | None:
    """Planar float samples ``(channels, n)`` of ``source``'s first audio stream in ``[start, end)``, its rate and
    layout; None when it has no audio."""
    with av.open(str(source)) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate)
        layout = stream.codec_context.layout.name if stream.codec_context.layout else "stereo"
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        chunks, first_time = [], None
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                if first_time is None:
                    first_time = float(out.time) if out.time is not None else 0.0
                chunks.append(out.to_ndarray())
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray())
    if not chunks:
        return None
    samples = np.concatenate(chunks, axis=1)
    begin = max(0, round((start - (first_time or 0.0)) * rate))
    stop = max(begin, round((end - (first_time or 0.0)) * rate))
    return np.ascontiguousarray(samples[:, begin:stop].astype(np.float32)), rate, layout


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: Fraction,
    audio_from: Path | None = None,
    audio_range: tuple[float, float] | None = None,
    crf: int = 18,
) -> Path:
    """``(n, H, W, 3)`` uint8 -> H.264 mp4 at ``fps`` (``data/format/video.py``'s one writer), with the AAC audio
    of ``audio_from`` in ``audio_range`` seconds when given. Written to a temporary name, then renamed."""
    audio = _audio_samples(audio_from, *audio_range) if audio_from is not None and audio_range else None
    return write_mp4(path, frames, fps, crf, audio=audio)


def write_frames(folder: str | Path, frames: np.ndarray) -> Path:
    """Every frame as ``folder/00000.png``..."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{i:05d}.png")
    return folder


def write_meta(output: str | Path, meta: dict) -> Path:
    """``<name>.meta.json``, atomically (the completion marker of ``output``)."""
    path = meta_path(output)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)
    return path


def audio_in_sync(fps: Fraction, source_fps: Fraction, stride: int) -> bool:
    """Whether ``fps`` plays the frames at their real speed (so the source audio lines up)."""
    real = float(source_fps) / stride
    return abs(float(fps) - real) <= AUDIO_RATE_TOLERANCE * real
