"""Keypoints for inference: DWPose on the driving frames and on the reference (cached by content hash), or the
official files (``saved_pkl/<video>.pkl``, a reference keypoint file), then the pose images the UNet sees.

Keypoints are the packed ``(t, 130, 2)`` format of ``data/format/keypoints.py``, normalised to the frame they were
measured on. Pose images are drawn by ``data/pose/render.py`` as the official preprocessing draws them; in
official mode they are drawn at the source resolution, JPEG-compressed and stretched like the released
``saved_pose`` files, in the default mode directly on the canvas from the fitted keypoints.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from animatex_train.data.format.keypoints import MISSING, NUM_POINTS, POINT_SLICES, PoseSequence, visible
from animatex_train.data.pose.render import render_pose
from animatex_train.inference.media import IMAGE_SUFFIXES, frame_number
from animatex_train.preprocess.pose.base import PoseEstimator, drop_outside_frame, pack_parts
from animatex_train.preprocess.pose.importers import load_official_pkl

log = logging.getLogger(__name__)
MIN_BODY_POINTS = 4  # a reference with fewer visible body points counts as "no person detected"
_ESTIMATE_CHUNK = 16  # frames per estimator call (bounds the decoded-frame memory DWPose holds)
_OFFICIAL_JPEG_QUALITY = 95  # cv2.imwrite's default, what process_data.py writes the pose frames with


def person_detected(points: np.ndarray) -> bool:
    """Whether ``(130, 2)`` keypoints show a person (at least ``MIN_BODY_POINTS`` body points)."""
    return int(visible(points[POINT_SLICES["body"]]).sum()) >= MIN_BODY_POINTS


class PoseCache:
    """DWPose results on disk, keyed by the sha256 of the pixels and of the model files.

    Args:
        folder: the cache folder (created); None disables caching.
        model_files: the estimator's model files (their content is part of the key).
    """

    def __init__(self, folder: str | Path | None, model_files: tuple[str, ...] = ()) -> None:
        self.folder = Path(folder).expanduser() if folder else None
        digest = hashlib.sha256()
        for name in model_files:
            digest.update(Path(name).read_bytes())
        self.model_key = digest.hexdigest()[:16]

    def get_or_compute(self, images: np.ndarray, compute: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """``compute(images)`` -> ``(n, 130, 2)``, read from the cache when these pixels were seen before."""
        if self.folder is None:
            return compute(images)
        key = hashlib.sha256(np.ascontiguousarray(images).tobytes() + str(images.shape).encode())
        path = self.folder / f"{self.model_key}-{key.hexdigest()[:32]}.npy"
        if path.is_file():
            log.info("poses from the cache %s", path)
            return np.load(path, allow_pickle=False)
        points = compute(images)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial.npy")
        np.save(tmp, points)
        tmp.replace(path)
        return points


def estimate(estimator: PoseEstimator, images: list[np.ndarray], cache: PoseCache) -> np.ndarray:
    """Keypoints ``(n, 130, 2)`` of ``images`` (each ``(h, w, 3)`` uint8, one size), normalised to the image."""
    stacked = np.stack(images)

    def run(frames: np.ndarray) -> np.ndarray:
        chunks = [
            estimator.estimate(frames[i : i + _ESTIMATE_CHUNK]).to_array()
            for i in range(0, len(frames), _ESTIMATE_CHUNK)
        ]
        return np.concatenate(chunks).astype(np.float32)

    return cache.get_or_compute(stacked, run)


def pkl_keypoints(path: str | Path, num_frames: int, frame_size: tuple[int, int]) -> np.ndarray:
    """All frames of an official ``saved_pkl/<video>.pkl`` as ``(t, 130, 2)`` (body + hands; no feet, as saved).

    Raises:
        ValueError: unreadable, or not made on this video (frame count or frame size differ), naming ``--pkl``.
    """
    data = load_official_pkl(Path(path))
    if data["bodies"].shape[0] != num_frames:
        raise ValueError(
            f"--pkl: {path} has keypoints for {data['bodies'].shape[0]} frames, the driving video has "
            f"{num_frames}; it was made on another video"
        )
    if tuple(data["size"][:2]) != tuple(frame_size):
        raise ValueError(
            f"--pkl: {path} was made on {data['size'][:2]} (height, width) frames, the video's are {tuple(frame_size)}"
        )

    def clean(points: np.ndarray) -> np.ndarray:
        points = points.copy()
        points[np.any(points == MISSING, axis=-1)] = MISSING
        return drop_outside_frame(points)

    return pack_parts(clean(data["bodies"]), None, clean(data["hands"]), None)


def pkl_fps(path: str | Path) -> float | None:
    """The frame rate stored in an official pkl (None if absent)."""
    fps = load_official_pkl(Path(path)).get("fps")
    return None if fps is None else float(fps)


def read_reference_keypoints(path: str | Path) -> np.ndarray:
    """``--ref_keypoints``: ``.npy`` ``(130, 2)`` / ``(18, 2)`` / ``(1, 130, 2)`` normalised, or an official pkl
    (the ``<pkl>_ref_pose.pkl`` the released loader looks for). Returns ``(130, 2)``."""
    path = Path(path)
    if path.suffix == ".pkl":
        return pkl_keypoints(path, 1, tuple(load_official_pkl(path)["size"][:2]))[0]
    points = np.load(path, allow_pickle=False).astype(np.float32)
    points = points.reshape(-1, 2)
    if points.shape[0] not in (18, 62, NUM_POINTS):
        raise ValueError(f"--ref_keypoints: {path} holds {points.shape[0]} points; expected 18 (body), 62 or 130")
    full = np.full((NUM_POINTS, 2), MISSING, dtype=np.float32)
    full[: points.shape[0]] = points
    return drop_outside_frame(full)


def pose_images(keypoints: np.ndarray, canvas: tuple[int, int]) -> np.ndarray:
    """``(t, 130, 2)`` canvas-normalised keypoints -> ``(t, H, W, 3)`` uint8 pose images drawn on the canvas."""
    return render_pose(PoseSequence.from_array(keypoints, canvas, name="driving poses"), canvas, name="driving poses")


def official_pose_images(keypoints: np.ndarray, frame_size: tuple[int, int], canvas: tuple[int, int]) -> np.ndarray:
    """As the released files: drawn at the source ``frame_size``, written as JPEG by cv2, read back by PIL and
    stretched to the canvas with PIL bilinear (``Resize([512, 768])``)."""
    drawn = render_pose(PoseSequence.from_array(keypoints, frame_size, name="driving poses"), frame_size)
    out = np.empty((len(drawn), *canvas, 3), dtype=np.uint8)
    for i, image in enumerate(drawn):
        # render_pose returns the model's RGB, i.e. the official canvas with its channels reversed; cv2 writes the
        # canvas as BGR, so the canvas is image[..., ::-1] and PIL reads the JPEG back as RGB = image.
        ok, encoded = cv2.imencode(
            ".jpg", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, _OFFICIAL_JPEG_QUALITY]
        )
        if not ok:
            raise RuntimeError("JPEG encoding of a pose image failed")
        decoded = Image.open(io.BytesIO(encoded.tobytes())).convert("RGB")
        out[i] = np.asarray(decoded.resize((canvas[1], canvas[0]), Image.BILINEAR))
    return out


def read_pose_dir(folder: str | Path, count: int) -> tuple[np.ndarray | None, list[Path]]:
    """The official ``saved_pose/<video>`` folder: (``ref_pose.jpg`` or None, frame files sorted by number)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--pose_dir: {folder} is not a folder")
    files = sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.stem != "ref_pose"),
        key=lambda p: (frame_number(p), p.name),
    )
    if len(files) != count:
        raise ValueError(f"--pose_dir: {folder} holds {len(files)} pose images, the driving video {count} frames")
    ref = next((p for p in folder.iterdir() if p.stem == "ref_pose"), None)
    return (np.asarray(Image.open(ref).convert("RGB")) if ref else None), files


def ipi_keypoints(keypoints: np.ndarray) -> np.ndarray:
    """``(t, 130, 2)`` -> ``(t, 2, 18)`` float32 (the IPI's body rows: x then y)."""
    return np.ascontiguousarray(keypoints[:, POINT_SLICES["body"]].transpose(0, 2, 1)).astype(np.float32)
