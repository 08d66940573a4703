"""The training-shard schema: one clip per WebDataset sample, safe encodings only.

``data/SCHEMA.md`` documents the same contract for people; this module is the code side. Writers
(``preprocess/`` and the synthetic dataset) build samples with ``encode_clip``; the loader reads
them with ``decode_clip``, which decodes only the members listed here, with decoders that cannot
execute code (numpy's ``.npy`` header reader with the data viewed in place and object arrays refused,
``json``, JPEG bytes left for OpenCV). Any other member (``.pyd``, ``.pickle``, ``.pth``, ...) is
never decoded.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from animatex_train.data.format.keypoints import NUM_POINTS, PoseSequence

SCHEMA_VERSION = 1
VAE_DOWNSAMPLE = 8
LATENT_CHANNELS = 4

META = "meta.json"
LATENT_MEAN = "latent_mean.npy"
LATENT_STD = "latent_std.npy"
CLIP_EMBEDS = "clip.npy"
POSE = "pose.npy"
FRAMES_MP4 = "frames.mp4"
_REF_JPG = re.compile(r"^ref(\d+)\.jpg$")
REQUIRED_MEMBERS = (META, LATENT_MEAN, LATENT_STD, CLIP_EMBEDS, POSE)
OPTIONAL_MEMBERS = (FRAMES_MP4,)
_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


class SampleError(ValueError):
    """A sample that does not follow the schema; the message names the sample key and the member."""


@dataclass(frozen=True)
class ClipMeta:
    """``meta.json``: where a clip comes from and how it was sampled.

    Attributes:
        video_id: stable id of the source video (letters, digits, ``_``, ``-``).
        clip_index: index of this clip within its video.
        frame_indices: source-video frame index of every stored frame (exact decode positions).
        fps: frame rate of the stored frames (after resampling).
        source_fps: frame rate of the source video.
        height: pixel height of the frames the latents, CLIP features and keypoints were made from.
        width: pixel width of the same.
        ref_frames: clip-frame indices of the candidate reference frames stored as ``ref{k}.jpg``.
        pose_source: what produced the keypoints (``dwpose``, ``mediapipe``, ``pkl``, ``synthetic``).
        split: dataset split (``train``, ``val``, ``test``).
        source: free text: where the video came from.
        licence: free text: the video's licence.
        schema_version: the schema this sample follows.
    """

    video_id: str
    clip_index: int
    frame_indices: list[int]
    fps: float
    source_fps: float
    height: int
    width: int
    ref_frames: list[int]
    pose_source: str
    split: str = "train"
    source: str = ""
    licence: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def num_frames(self) -> int:
        return len(self.frame_indices)

    @property
    def key(self) -> str:
        return clip_key(self.video_id, self.clip_index)


def clip_key(video_id: str, clip_index: int) -> str:
    """The WebDataset ``__key__`` of a clip; it never contains a dot (WebDataset splits keys there)."""
    if not _KEY.match(video_id):
        raise SampleError(f"video id {video_id!r} may only contain letters, digits, '_' and '-'")
    return f"{video_id}-c{clip_index:05d}"


@dataclass
class ClipRecord:
    """One decoded training sample (a clip).

    Attributes:
        key: the sample key.
        meta: the clip's metadata.
        latent_mean: ``(t, 4, h/8, w/8)`` float16, the VAE posterior mean (raw, not scaled).
        latent_std: ``(t, 4, h/8, w/8)`` float16, the VAE posterior standard deviation.
        clip_embeds: ``(t, d)`` float16, pooled CLIP image embedding of every frame.
        pose: keypoints of every frame.
        ref_jpegs: JPEG bytes of each candidate reference frame, in ``meta.ref_frames`` order.
        frames_mp4: optional H.264 bytes of the clip's frames.
        source_url: the shard this sample was read from (set by the reader).
    """

    key: str
    meta: ClipMeta
    latent_mean: np.ndarray
    latent_std: np.ndarray
    clip_embeds: np.ndarray
    pose: PoseSequence
    ref_jpegs: list[bytes]
    frames_mp4: bytes | None = None
    source_url: str = field(default="", compare=False)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _load_npy(data: bytes, key: str, member: str) -> np.ndarray:
    """A read-only array over ``data`` itself (no copy); never unpickles (object arrays are refused)."""
    try:
        header = io.BytesIO(data)
        version = np.lib.format.read_magic(header)
        if version not in ((1, 0), (2, 0)):  # rare header versions: numpy's own reader (it copies)
            return np.load(io.BytesIO(data), allow_pickle=False)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(header)
        if dtype.hasobject:
            raise ValueError("object arrays need pickle, which is never used")
        count = int(np.prod(shape, dtype=np.int64))
        flat = np.frombuffer(data, dtype=dtype, count=count, offset=header.tell())
        return flat.reshape(shape, order="F" if fortran_order else "C")
    except (ValueError, OSError, EOFError) as error:
        raise SampleError(f"sample {key!r}: member {member!r} is not a readable .npy array ({error})") from error


def _finite(array: np.ndarray) -> bool:
    if array.dtype == np.float16:  # exponent bits all set = inf/NaN; much faster than np.isfinite on float16
        return not bool(np.any((array.view(np.uint16) & 0x7C00) == 0x7C00))
    return bool(np.isfinite(array).all())


def _has_negative(array: np.ndarray) -> bool:
    if array.dtype == np.float16:  # sign bit set and not -0.0 (NaNs are caught by _finite)
        return bool(np.any(array.view(np.uint16) > 0x8000))
    return bool(array.size) and float(array.min()) < 0


def check_latent_values(key: str, mean: np.ndarray, std: np.ndarray) -> None:
    """Raise ``SampleError`` if posterior values (all frames, or the frames a sample uses) are NaN/inf/negative std."""
    for member, array in ((LATENT_MEAN, mean), (LATENT_STD, std)):
        if not _finite(array):
            raise SampleError(f"sample {key!r}: {member} contains NaN or inf")
    if _has_negative(std):
        raise SampleError(f"sample {key!r}: {LATENT_STD} has negative values")


def encode_clip(record: ClipRecord) -> dict[str, Any]:
    """Encode a clip as a WebDataset sample dict (``__key__`` plus member name -> bytes).

    Validates the record first, so a writer can never emit a sample the loader would reject.
    """
    validate_clip(record)
    sample: dict[str, Any] = {
        "__key__": record.key,
        META: json.dumps(asdict(record.meta), sort_keys=True).encode(),
        LATENT_MEAN: _npy_bytes(record.latent_mean.astype(np.float16)),
        LATENT_STD: _npy_bytes(record.latent_std.astype(np.float16)),
        CLIP_EMBEDS: _npy_bytes(record.clip_embeds.astype(np.float16)),
        POSE: _npy_bytes(record.pose.to_array()),
    }
    for k, jpeg in enumerate(record.ref_jpegs):
        sample[f"ref{k}.jpg"] = jpeg
    if record.frames_mp4 is not None:
        sample[FRAMES_MP4] = record.frames_mp4
    return sample


def decode_clip(raw: dict[str, Any], check_values: bool = True) -> ClipRecord:
    """Decode a raw WebDataset sample (member name -> bytes) into a ``ClipRecord``.

    The arrays are read-only views of the member bytes. With ``check_values=False`` the latent posterior's
    values are not scanned for NaN/inf (shapes and everything else still are): the training loader checks
    only the frames a sample uses (``check_latent_values``), a clip can be much longer than its window.

    Raises:
        SampleError: a required member is missing or malformed; the message names key and member.
    """
    key = str(raw.get("__key__", "<no key>"))
    missing = [m for m in REQUIRED_MEMBERS if m not in raw]
    if missing:
        raise SampleError(f"sample {key!r}: missing member(s) {missing}; every sample needs {list(REQUIRED_MEMBERS)}")
    try:
        meta_dict = json.loads(bytes(raw[META]).decode())
        meta = ClipMeta(**meta_dict)
    except (ValueError, TypeError) as error:
        raise SampleError(f"sample {key!r}: member {META!r} is not valid clip metadata ({error})") from error
    if meta.schema_version != SCHEMA_VERSION:
        raise SampleError(
            f"sample {key!r}: schema version {meta.schema_version}, this code reads version {SCHEMA_VERSION}; "
            "re-run `animatex-train prepare` with this version"
        )
    refs = []
    for k in range(len(meta.ref_frames)):
        member = f"ref{k}.jpg"
        if member not in raw:
            listed = len(meta.ref_frames)
            raise SampleError(f"sample {key!r}: missing member {member!r} (meta.json lists {listed} refs)")
        refs.append(bytes(raw[member]))
    pose_array = _load_npy(raw[POSE], key, POSE)
    try:
        pose = PoseSequence.from_array(pose_array, (meta.height, meta.width), name=f"sample {key!r} {POSE}")
    except ValueError as error:
        raise SampleError(str(error)) from error
    record = ClipRecord(
        key=key,
        meta=meta,
        latent_mean=_load_npy(raw[LATENT_MEAN], key, LATENT_MEAN),
        latent_std=_load_npy(raw[LATENT_STD], key, LATENT_STD),
        clip_embeds=_load_npy(raw[CLIP_EMBEDS], key, CLIP_EMBEDS),
        pose=pose,
        ref_jpegs=refs,
        frames_mp4=bytes(raw[FRAMES_MP4]) if FRAMES_MP4 in raw else None,
        source_url=str(raw.get("__url__", "")),
    )
    for member, array in (
        (LATENT_MEAN, record.latent_mean),
        (LATENT_STD, record.latent_std),
        (CLIP_EMBEDS, record.clip_embeds),
    ):
        # the schema stores these as float16 (encode_clip); another dtype means another writer, not ours
        if array.dtype != np.float16:
            raise SampleError(
                f"sample {key!r}: {member} is {array.dtype}, the schema stores float16; re-run "
                "`animatex-train prepare` to rewrite the shard"
            )
    validate_clip(record, check_values)
    return record


def validate_clip(record: ClipRecord, check_values: bool = True) -> None:
    """Check shapes, dtypes and cross-member consistency; raise ``SampleError`` naming key and member.

    ``check_values=False`` skips the scan of the latent posterior's values (see ``decode_clip``).
    """
    key, meta, t = record.key, record.meta, record.meta.num_frames
    if key != meta.key:
        raise SampleError(f"sample {key!r}: key does not match meta.json (video_id/clip_index give {meta.key!r})")
    if t < 1:
        raise SampleError(f"sample {key!r}: {META} lists no frames")
    if meta.height % VAE_DOWNSAMPLE or meta.width % VAE_DOWNSAMPLE:
        raise SampleError(
            f"sample {key!r}: resolution {meta.height}x{meta.width} is not divisible by the VAE factor {VAE_DOWNSAMPLE}"
        )
    latent_shape = (t, LATENT_CHANNELS, meta.height // VAE_DOWNSAMPLE, meta.width // VAE_DOWNSAMPLE)
    for member, array in ((LATENT_MEAN, record.latent_mean), (LATENT_STD, record.latent_std)):
        if tuple(array.shape) != latent_shape:
            raise SampleError(f"sample {key!r}: {member} has shape {tuple(array.shape)}, expected {latent_shape}")
    if check_values:
        check_latent_values(key, record.latent_mean, record.latent_std)
    if record.clip_embeds.ndim != 2 or record.clip_embeds.shape[0] != t:
        shape = tuple(record.clip_embeds.shape)
        raise SampleError(f"sample {key!r}: {CLIP_EMBEDS} has shape {shape}, expected ({t}, d)")
    if not _finite(record.clip_embeds):
        raise SampleError(f"sample {key!r}: {CLIP_EMBEDS} contains NaN or inf")
    if record.pose.num_frames != t:
        raise SampleError(f"sample {key!r}: {POSE} has {record.pose.num_frames} frames, expected {t}")
    if len(record.ref_jpegs) != len(meta.ref_frames):
        raise SampleError(f"sample {key!r}: {len(record.ref_jpegs)} reference JPEGs for {len(meta.ref_frames)} refs")
    if any(not 0 <= r < t for r in meta.ref_frames):
        raise SampleError(f"sample {key!r}: reference frame index out of range 0..{t - 1}: {meta.ref_frames}")
    if not meta.ref_frames:
        raise SampleError(f"sample {key!r}: no reference frame stored (need at least one ref0.jpg)")


__all__ = [
    "CLIP_EMBEDS",
    "FRAMES_MP4",
    "LATENT_MEAN",
    "LATENT_STD",
    "META",
    "NUM_POINTS",
    "POSE",
    "SCHEMA_VERSION",
    "ClipMeta",
    "ClipRecord",
    "SampleError",
    "check_latent_values",
    "clip_key",
    "decode_clip",
    "encode_clip",
    "validate_clip",
]
