"""Keypoints computed elsewhere: the official Animate-X ``.pkl`` files, and ``<stem>.pose.npy`` sidecars.

The official ``process_data.py`` pickles one dict per video (docs/official_release.md §7): ``bodies`` ``(T, 18, 2)``,
``body_indices`` ``(T, 18)``, ``faces`` ``(T, 68, 2)``, ``hands`` ``(T, 2, 21, 2)`` (normalised, -1 =
missing), ``size`` ``(H, W, 3)`` and ``fps``. A pickle can run arbitrary code when loaded, and these files
come from outside, so they are read with ``SafeKeypointUnpickler``: it resolves only the numpy globals
that rebuild plain arrays and refuses everything else before it can be called (docs/reliability.md §3.1).

A sidecar is ``(T, 130, 2)`` (or ``(T, 62, 2)`` without a face) float32 in the packed format of
``data/format/keypoints.py``, normalised to the video's frames, read with ``allow_pickle=False``. The optional
``<stem>.pose.json`` next to it (written by ``--stages pose``) lists the frames it covers and what made it.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from animatex_train.data.format.keypoints import MISSING, NUM_POINTS, KeypointError, validate_coordinates
from animatex_train.preprocess import rejects
from animatex_train.preprocess.inputs import VideoSource
from animatex_train.preprocess.pose.base import SourcePoses, drop_outside_frame, pack_parts
from animatex_train.preprocess.rejects import VideoRejected
from animatex_train.preprocess.video import VideoInfo

SIDECAR_SUFFIX = ".pose.npy"
SIDECAR_INFO_SUFFIX = ".pose.json"
PKL_SUFFIX = ".pkl"
_MAX_PKL_BYTES = 512 * 1024 * 1024  # a 10-minute 60 fps video's keypoints are ~30 MB; refuse absurd files

# The only globals a pickled dict of numpy arrays needs, for numpy 1.x (numpy.core) and 2.x (numpy._core)
# pickles, protocols 2-5. Each of them only builds an array, a dtype or bytes from plain data; none can reach
# the file system, the interpreter or an arbitrary callable.
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # protocols 0-2 store bytes (the array data) as str -> bytes; a pure conversion
    }
)


class SafeKeypointUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and builtin containers, and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a keypoint .pkl may only contain numpy arrays, numbers, tuples, "
            "lists and dicts (a file that needs anything else is not an official Animate-X keypoint file)"
        )


def load_official_pkl(path: Path) -> dict[str, Any]:
    """Read an official Animate-X keypoint ``.pkl`` safely and check its structure.

    Returns:
        The dict with ``bodies``, ``faces``, ``hands`` as float arrays, ``size`` and ``fps``.

    Raises:
        ValueError: not a keypoint pickle (the message says what is wrong); includes refused globals.
    """
    size = path.stat().st_size
    if size > _MAX_PKL_BYTES:
        raise ValueError(f"{path}: {size} bytes is too large for a keypoint file (limit {_MAX_PKL_BYTES})")
    try:
        data = SafeKeypointUnpickler(io.BytesIO(path.read_bytes())).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError) as error:
        raise ValueError(f"{path}: not a readable keypoint pickle ({error})") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict, got {type(data).__name__}")
    missing = [k for k in ("bodies", "faces", "hands", "size") if k not in data]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}; an official .pkl has bodies, faces, hands, size, fps")
    out: dict[str, Any] = {"size": tuple(int(v) for v in np.asarray(data["size"]).ravel()), "fps": data.get("fps")}
    shapes = {"bodies": (18, 2), "faces": (68, 2), "hands": (2, 21, 2)}
    for key, tail in shapes.items():
        array = np.asarray(data[key])
        if array.dtype.kind not in "fiu":
            raise ValueError(f"{path}: {key} has dtype {array.dtype}, expected numbers")
        if array.ndim != len(tail) + 1 or array.shape[1:] != tail:
            raise ValueError(f"{path}: {key} has shape {array.shape}, expected (frames, {', '.join(map(str, tail))})")
        out[key] = array.astype(np.float32)
    lengths = {key: out[key].shape[0] for key in shapes}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{path}: bodies, faces and hands cover different frame counts {lengths}")
    if len(out["size"]) < 2:
        raise ValueError(f"{path}: size {out['size']} should be (height, width, 3)")
    return out


def _normalise_missing(points: np.ndarray) -> np.ndarray:
    """Official files mark a missing point with -1 in both coordinates; treat any -1 as a missing point."""
    points = points.copy()
    points[np.any(points == MISSING, axis=-1)] = MISSING
    return drop_outside_frame(points)


class OfficialPklImporter:
    """Keypoints from the official ``process_data.py`` output: ``<pkl_dir>/<rel_path stem>.pkl``.

    Args:
        folder: where the ``.pkl`` files are (mirroring the input folder); None = next to each video.

    The pkl has no foot points (the official file keeps the 18 body points only) and its face and hands
    are kept. Frames are numbered by ``cv2.VideoCapture`` reading order, which is presentation order, the
    same numbering as ours.
    """

    name = "pkl"

    def __init__(self, folder: Path | None = None, keep_face: bool = True) -> None:
        self.folder = folder
        self.keep_face = keep_face

    def load(self, video: VideoSource, info: VideoInfo) -> SourcePoses:
        path = video.sidecar_path(self.folder, PKL_SUFFIX)
        if not path.is_file():
            raise VideoRejected(rejects.POSE_UNAVAILABLE, f"no keypoint file {path}")
        try:
            data = load_official_pkl(path)
        except (ValueError, OSError) as error:
            raise VideoRejected(rejects.POSE_UNAVAILABLE, str(error)) from error
        if tuple(data["size"][:2]) != info.frame_size:
            raise VideoRejected(
                rejects.POSE_UNAVAILABLE,
                f"{path} was made on {data['size'][:2]} (height, width) frames, the video's are {info.frame_size}",
            )
        count = data["bodies"].shape[0]
        if count != info.num_frames:
            raise VideoRejected(
                rejects.POSE_UNAVAILABLE, f"{path} has keypoints for {count} frames, the video has {info.num_frames}"
            )
        points = pack_parts(
            _normalise_missing(data["bodies"]),
            None,
            _normalise_missing(data["hands"]),
            _normalise_missing(data["faces"]) if self.keep_face else None,
        )
        return SourcePoses(points=points, available=np.ones(count, dtype=bool), pose_source="dwpose-pkl")


def read_sidecar_info(path: Path) -> dict[str, Any] | None:
    """The ``.pose.json`` written beside a pose-stage sidecar, or None when absent."""
    info_path = path.with_name(path.name[: -len(SIDECAR_SUFFIX)] + SIDECAR_INFO_SUFFIX)
    if not info_path.is_file():
        return None
    try:
        info = json.loads(info_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{info_path}: unreadable ({error})") from error
    if not isinstance(info, dict):
        raise ValueError(f"{info_path}: expected a JSON object")
    return info


class SidecarImporter:
    """Keypoints from ``<sidecar_dir>/<rel_path stem>.pose.npy`` (or next to the video).

    Args:
        folder: where the sidecars are (mirroring the input folder); None = next to each video.
    """

    name = "sidecar"

    def __init__(self, folder: Path | None = None, keep_face: bool = True) -> None:
        self.folder = folder
        self.keep_face = keep_face

    def load(self, video: VideoSource, info: VideoInfo) -> SourcePoses:
        path = video.sidecar_path(self.folder, SIDECAR_SUFFIX)
        if not path.is_file():
            raise VideoRejected(rejects.POSE_UNAVAILABLE, f"no keypoint sidecar {path}")
        try:
            points = np.load(path, allow_pickle=False)
            extra = read_sidecar_info(path)
        except (ValueError, OSError) as error:
            raise VideoRejected(rejects.POSE_UNAVAILABLE, f"{path}: unreadable ({error})") from error
        if points.ndim != 3 or points.shape[1] not in (62, NUM_POINTS) or points.shape[2] != 2:
            raise VideoRejected(
                rejects.POSE_UNAVAILABLE,
                f"{path} has shape {points.shape}, expected (frames, 130, 2) or (frames, 62, 2)",
            )
        if points.shape[0] != info.num_frames:
            raise VideoRejected(
                rejects.POSE_UNAVAILABLE, f"{path} has {points.shape[0]} frames, the video has {info.num_frames}"
            )
        try:
            validate_coordinates(points.astype(np.float32), str(path))
        except KeypointError as error:
            raise VideoRejected(rejects.POSE_UNAVAILABLE, str(error)) from error
        full = np.full((points.shape[0], NUM_POINTS, 2), MISSING, dtype=np.float32)
        full[:, : points.shape[1]] = points
        if not self.keep_face:
            full[:, 62:] = MISSING
        available = np.ones(points.shape[0], dtype=bool)
        source = "sidecar"
        if extra is not None:
            if tuple(extra.get("frame_size", info.frame_size)) != info.frame_size:
                raise VideoRejected(
                    rejects.POSE_UNAVAILABLE,
                    f"{path} was made on {extra.get('frame_size')} frames, the video's are {info.frame_size}",
                )
            if "frames" in extra:
                covered = np.asarray(extra["frames"], dtype=np.int64)
                if covered.size and (covered.min() < 0 or covered.max() >= info.num_frames):
                    raise VideoRejected(rejects.POSE_UNAVAILABLE, f"{path}: its .pose.json lists frames out of range")
                available[:] = False
                available[covered] = True
            source = str(extra.get("pose_source", source))
        return SourcePoses(points=full, available=available, pose_source=source)
