"""Video files: the one H.264 mp4 writer (reproducible bytes) and the layouts sample clips are written in.

The synthetic dataset, prepared shards (``frames.mp4``), validation sample clips, the demo and ``animate`` all encode
through ``encode_mp4``: it converts RGB to yuv420p itself and runs x264 single-threaded without the instructions
that read uninitialised memory, so the same frames give the same file on every machine.
"""

from __future__ import annotations

import functools
import io
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image


def rgb_to_yuv420p(frame: np.ndarray) -> np.ndarray:
    """``(h, w, 3)`` uint8 RGB to ``(3h/2, w)`` uint8 planar yuv420p, BT.601 limited range, in integer arithmetic.

    Converting here rather than in swscale keeps the encoder input identical on every CPU (swscale's SIMD
    paths are not always bit-exact with each other).
    """
    rgb = frame.astype(np.int32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
    u = ((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128
    v = ((112 * r - 94 * g - 18 * b + 128) >> 8) + 128
    height, width = y.shape

    def subsample(plane: np.ndarray) -> np.ndarray:
        return (plane.reshape(height // 2, 2, width // 2, 2).sum(axis=(1, 3)) + 2) >> 2

    chroma = np.concatenate([subsample(u).reshape(-1), subsample(v).reshape(-1)]).reshape(height // 2, width)
    return np.concatenate([y, chroma]).astype(np.uint8)


@functools.cache
def _x264_params() -> str:
    """x264 settings that make its output depend on the frames only.

    One thread (x264's output depends on its thread count, which defaults to the machine's core count), and no
    AVX-512 routines: on an AVX-512 CPU 3 of 20 encodings of the same 96-pixel-wide clip differed, none with the
    AVX2 set (which every AVX-512 CPU has). Elsewhere x264 picks its instruction set itself.
    """
    params = "threads=1:lookahead-threads=1"
    try:
        cpu = Path("/proc/cpuinfo").read_text()
    except OSError:
        return params
    if " avx512f" in cpu and " avx2" in cpu and " bmi2" in cpu and " fma" in cpu:
        params += ":asm=MMX2,SSE,SSE2,SSE3,SSSE3,SSE4.1,SSE4.2,AVX,FMA3,BMI1,BMI2,AVX2"
    return params


def encode_mp4(
    frames: np.ndarray, fps: float | Fraction = 8.0, crf: int = 18, audio: tuple[np.ndarray, int, str] | None = None
) -> bytes:
    """``(t, h, w, 3)`` uint8 RGB frames as H.264 yuv420p in an MP4, byte-identical for identical frames.

    Odd sizes are padded with black to even ones (yuv420p needs them). ``+bitexact`` keeps FFmpeg's version string
    out of the file, so the bytes do not change with the FFmpeg build either.

    Args:
        audio: optional ``(samples, rate, layout)``: float32 ``(channels, n)`` planar samples, muxed as AAC.
    """
    num_frames, height, width, _ = frames.shape
    if height % 2 or width % 2:
        padded = np.zeros((num_frames, height + height % 2, width + width % 2, 3), dtype=np.uint8)
        padded[:, :height, :width] = frames
        frames, height, width = padded, height + height % 2, width + width % 2
    rate = Fraction(fps).limit_denominator(100_000)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264", rate=rate)
        context = stream.codec_context
        context.width, context.height, context.pix_fmt = width, height, "yuv420p"
        context.time_base = 1 / rate
        context.thread_count = 1
        context.flags |= av.codec.context.Flags.bitexact
        context.options = {"crf": str(crf), "preset": "medium", "x264-params": _x264_params()}
        context.color_range, context.colorspace = 1, 6  # limited range, BT.601 (SMPTE 170M): what we convert to
        context.color_primaries, context.color_trc = 6, 6
        sound = None
        if audio is not None and audio[0].shape[1] > 0:
            sound = container.add_stream("aac", rate=audio[1])
            sound.layout = audio[2]
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(rgb_to_yuv420p(frames[index]), format="yuv420p")
            frame.pts, frame.time_base = index, 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        if sound is not None:
            _mux_audio(container, sound, *audio)
    return buffer.getvalue()


def _mux_audio(container, sound, samples: np.ndarray, rate: int, layout: str) -> None:
    step = sound.codec_context.frame_size or 1024
    for offset in range(0, samples.shape[1], step):
        chunk = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples[:, offset : offset + step]), format="fltp", layout=layout
        )
        chunk.sample_rate, chunk.pts = rate, offset
        container.mux(sound.encode(chunk))
    container.mux(sound.encode(None))


def write_mp4(
    path: str | Path,
    frames: np.ndarray,
    fps: float | Fraction = 8.0,
    crf: int = 18,
    audio: tuple[np.ndarray, int, str] | None = None,
) -> Path:
    """``encode_mp4`` into ``path`` through a temporary name, so a crash never leaves a truncated file; returns
    ``path`` (its parent folder is created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".partial" + path.suffix)
    tmp.write_bytes(encode_mp4(frames, fps, crf, audio))
    os.replace(tmp, path)
    return path


def match_height(clip: np.ndarray, height: int) -> np.ndarray:
    """Resize ``(f, H, W, 3)`` frames to ``height``, keeping the aspect ratio."""
    if clip.shape[1] == height:
        return clip
    width = round(clip.shape[2] * height / clip.shape[1])
    return np.stack([np.asarray(Image.fromarray(frame).resize((width, height))) for frame in clip])


def side_by_side(*columns: np.ndarray) -> np.ndarray:
    """Concatenate ``(f, H, W, 3)`` uint8 clips horizontally (each resized to the first one's height)."""
    return np.concatenate([match_height(clip, columns[0].shape[1]) for clip in columns], axis=2)


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
