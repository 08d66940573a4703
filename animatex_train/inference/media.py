"""Reading the two inputs: the reference image and the driving video's frames.

The reference honours its EXIF orientation and is composited over a background when it has transparency
(the official ``cv2.imread`` drops the alpha channel and keeps whatever colour the transparent pixels hold;
``official=True`` keeps that). The driving video is an mp4 (decoded with PyAV by exact presentation index,
display rotation applied) or the official ``saved_frames/<video>`` folder of ``frame_%04d.jpg`` files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageOps

from animatex_train.preprocess.video import VideoInfo, probe_video

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def load_reference(path: str | Path, bg: tuple[int, int, int] = (255, 255, 255), official: bool = False) -> np.ndarray:
    """The reference as ``(h, w, 3)`` uint8 RGB, upright.

    Args:
        path: an image file.
        bg: colour under transparent pixels.
        official: drop the alpha channel instead of compositing (the released ``cv2.imread``).

    Raises:
        FileNotFoundError / ValueError: naming ``--ref``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--ref: {path} does not exist")
    try:
        image = ImageOps.exif_transpose(Image.open(path))
    except OSError as error:
        raise ValueError(f"--ref: {path} is not a readable image ({error})") from error
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha and not official:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*bg, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"))


@dataclass
class DrivingSource:
    """A driving video (file or official frames folder) and its timing.

    Attributes:
        path: the mp4 or the frames folder.
        info: frame count, rate and timestamps (a folder: one frame per ``1 / fps`` s).
        frame_files: the folder's images in frame order (None for a video file).
    """

    path: Path
    info: VideoInfo
    frame_files: list[Path] | None = None

    @property
    def is_folder(self) -> bool:
        return self.frame_files is not None

    def frames(self, indices: np.ndarray) -> dict[int, np.ndarray]:
        """Decode the frames at ``indices`` (any order, repeats allowed): index -> ``(h, w, 3)`` uint8 RGB."""
        wanted = sorted(set(int(i) for i in indices))
        if self.frame_files is not None:
            return {
                i: np.asarray(ImageOps.exif_transpose(Image.open(self.frame_files[i])).convert("RGB")) for i in wanted
            }
        return _decode(self.path, self.info, wanted)


def frame_number(path: Path) -> int:
    """The last number in a frame file's name (``frame_0012.jpg`` -> 12; -1 without one)."""
    numbers = re.findall(r"\d+", path.stem)
    return int(numbers[-1]) if numbers else -1


def open_driving(path: str | Path, folder_fps: float | None = None) -> DrivingSource:
    """Probe ``--video``: a video file, or a folder of frames (sorted by the number in the name, not listdir).

    Args:
        path: the video or folder.
        folder_fps: frame rate of a folder (the official pkl's ``fps``); needed for folders.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(
            (p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.stem != "ref_pose"),
            key=lambda p: (frame_number(p), p.name),
        )
        if not files:
            raise ValueError(f"--video: the folder {path} holds no frame images ({', '.join(IMAGE_SUFFIXES)})")
        if folder_fps is None:
            raise ValueError(
                f"--video: {path} is a frames folder; its frame rate comes from --pkl (the official "
                "pkl stores fps) or --source_fps"
            )
        with Image.open(files[0]) as first:
            width, height = ImageOps.exif_transpose(first).size
        fps = Fraction(str(folder_fps))
        times = np.arange(len(files), dtype=np.float64) / float(fps)
        info = VideoInfo(
            num_frames=len(files),
            fps=fps,
            height=height,
            width=width,
            frame_times=times,
            pts=tuple(range(len(files))),
            variable_frame_rate=False,
            codec="images",
        )
        return DrivingSource(path, info, files)
    if not path.is_file():
        raise FileNotFoundError(f"--video: {path} does not exist")
    return DrivingSource(path, probe_video(path))


def _decode(path: Path, info: VideoInfo, wanted: list[int]) -> dict[int, np.ndarray]:
    """Sequential decode keeping the ``wanted`` presentation indices; display rotation applied."""
    index_of_pts = {p: i for i, p in enumerate(info.pts)}
    wanted_set, last = set(wanted), wanted[-1]
    out: dict[int, np.ndarray] = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            index = index_of_pts.get(int(frame.pts)) if frame.pts is not None else None
            if index in wanted_set:
                image = frame.to_ndarray(format="rgb24")
                if frame.rotation:  # counter-clockwise degrees to display upright
                    image = np.ascontiguousarray(np.rot90(image, k=round(frame.rotation / 90) % 4))
                out[index] = image
            if index is not None and index >= last and len(out) == len(wanted_set):
                break
    missing = sorted(wanted_set - set(out))
    if missing:
        raise ValueError(f"--video: {path} did not decode frame(s) {missing[:5]} (a truncated or corrupt file?)")
    return out
