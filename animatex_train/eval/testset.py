"""A test set: the videos an evaluation generates from, with their keypoints, read from a JSONL manifest or from a
folder written by ``animatex-train synth`` (its ``metadata.jsonl`` split and ``<stem>.pose.npy`` keypoints)."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from animatex_train.data.format.keypoints import POINT_SLICES, PoseSequence

MANIFEST_KEYS = ("id", "video", "keypoints", "pkl", "ref", "split")


@dataclass(frozen=True)
class TestVideo:
    """One test video.

    Attributes:
        id: unique name (per-video rows, file names).
        video: the ground-truth video (mp4 or anything PyAV decodes).
        keypoints: ``<stem>.pose.npy`` packed keypoints ``(t, 130, 2)`` of every frame, or None.
        pkl: an official ``saved_pkl/<video>.pkl``, or None (neither: DWPose runs on the video).
        ref: a reference image; None = the video's frame ``reference_frame`` (DisCo: the first frame).
    """

    id: str
    video: Path
    keypoints: Path | None = None
    pkl: Path | None = None
    ref: Path | None = None


def _resolve(base: Path, value: str | None) -> Path | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def read_test_set(path: str | Path, split: str | None = "val", max_videos: int | None = None) -> list[TestVideo]:
    """The test videos of ``path``: a ``.jsonl`` manifest (one ``{"video": ..., "id"?, "keypoints"?, "pkl"?,
    "ref"?, "split"?}`` per line, paths relative to the manifest), or a folder with ``metadata.jsonl``.

    Args:
        path: the manifest or folder.
        split: keep only lines whose ``split`` is this (lines without one are kept); None keeps all.
        max_videos: keep the first N (after the split filter).

    Raises:
        FileNotFoundError / ValueError: naming the manifest line and the key.
    """
    path = Path(path)
    manifest = path / "metadata.jsonl" if path.is_dir() else path
    if not manifest.is_file():
        raise FileNotFoundError(f"test_set: {path} is neither a .jsonl manifest nor a folder with metadata.jsonl")
    base = manifest.parent
    videos: list[TestVideo] = []
    for number, line in enumerate(manifest.read_text().splitlines(), 1):
        if not line.strip():
            continue
        record = json.loads(line)
        if "video" not in record:
            raise ValueError(f"{manifest}:{number}: missing key 'video' (the ground-truth video's path)")
        if split is not None and record.get("split", split) != split:
            continue
        video = _resolve(base, record["video"])
        if not video.is_file():
            raise FileNotFoundError(f"{manifest}:{number}: video {video} does not exist")
        keypoints = _resolve(base, record.get("keypoints"))
        sidecar = video.with_name(video.stem + ".pose.npy")
        if keypoints is None and record.get("pkl") is None and sidecar.is_file():
            keypoints = sidecar
        videos.append(
            TestVideo(
                str(record.get("id", video.stem)),
                video,
                keypoints,
                _resolve(base, record.get("pkl")),
                _resolve(base, record.get("ref")),
            )
        )
    if len({v.id for v in videos}) != len(videos):
        raise ValueError(f"{manifest}: video ids are not unique; give each line an 'id'")
    if not videos:
        raise ValueError(f"test_set: {manifest} has no videos of split {split!r}; set split: null to use all lines")
    return videos[:max_videos] if max_videos else videos


def video_frame(path: Path, index: int) -> np.ndarray:
    """Frame ``index`` (0-based, decode order) of a video as ``(H, W, 3)`` uint8 RGB."""
    with av.open(str(path)) as container:
        for number, frame in enumerate(container.decode(video=0)):
            if number == index:
                return frame.to_ndarray(format="rgb24")
    raise ValueError(f"{path} has no frame {index} (reference_frame)")


def video_info(path: Path) -> tuple[int, tuple[int, int], float]:
    """``(frame count, (height, width), fps)`` by decoding (exact for variable-rate files too)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(video=0))
        return count, (stream.codec_context.height, stream.codec_context.width), float(stream.average_rate or 8)


def load_pose(video: TestVideo) -> PoseSequence:
    """The video's packed keypoints as a ``PoseSequence`` (frame size from the video)."""
    if video.keypoints is None:
        raise ValueError(
            f"test video {video.id}: the cross-driven protocol needs its keypoints ('keypoints': "
            f"<stem>.pose.npy in the manifest)"
        )
    _, size, _ = video_info(video.video)
    return PoseSequence.from_array(np.load(video.keypoints, allow_pickle=False), size)


def write_official_pkl(pose: PoseSequence, fps: float, path: Path) -> Path:
    """Packed keypoints -> the official ``saved_pkl`` dict the ``animate`` pipeline reads with ``--pkl`` (feet are
    not part of that format; a missing face is -1). Written by us and read by the safe unpickler."""
    packed = pose.to_array()
    faces = (
        packed[:, POINT_SLICES["face"]]
        if packed.shape[1] > POINT_SLICES["face"].start
        else np.full((len(packed), 68, 2), -1.0, np.float32)
    )
    hands = np.stack([packed[:, POINT_SLICES["left_hand"]], packed[:, POINT_SLICES["right_hand"]]], axis=1)
    data = {
        "bodies": packed[:, POINT_SLICES["body"]],
        "body_indices": np.tile(np.arange(18), (len(packed), 1)),
        "faces": faces,
        "hands": hands,
        "size": (*pose.frame_size, 3),
        "fps": fps,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        pickle.dump(data, handle, protocol=4)
    return path
