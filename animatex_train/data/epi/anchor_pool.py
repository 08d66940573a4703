"""The anchor pool: the body shapes EPI realigns driving poses to (docs/official_release.md §3, "a pose pool").

On disk a pool is two files, never a pickle: ``<name>.npy``, float32 ``(n, 130, 2)`` packed keypoints in the
``keypoints.POINT_SLICES`` layout, and ``<name>.json``, a sidecar with each anchor's frame size and provenance.
The paper samples the pool from the human training set; anthropomorphic anchors can be added from files.
"""

from __future__ import annotations

import glob
import heapq
import io
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from animatex_train.data.format.keypoints import (
    BODY,
    MISSING,
    NUM_BODY,
    NUM_POINTS,
    POINT_SLICES,
    KeypointError,
    PoseSequence,
    validate_coordinates,
    visible,
)
from animatex_train.data.format.schema import META, POSE, ClipMeta, SampleError
from animatex_train.data.format.shard_reader import iter_samples

POOL_FORMAT = "animatex-anchor-pool"
POOL_VERSION = 1
DEFAULT_FRAME_SIZE = (768, 512)
# A full-body anchor needs every joint realignment measures the torso and head from, and each leg.
REQUIRED_JOINTS = tuple(BODY[n] for n in ("nose", "neck", "right_shoulder", "left_shoulder", "right_hip", "left_hip"))
LEG_JOINTS = ((BODY["right_knee"], BODY["right_ankle"]), (BODY["left_knee"], BODY["left_ankle"]))

log = logging.getLogger(__name__)


class AnchorPoolError(ValueError):
    """An anchor pool that cannot be used (empty, malformed, or an anchor without a neck)."""


def is_full_body(body: np.ndarray, min_visible: int = 12) -> np.ndarray:
    """``(t,)`` bool: nose, neck, both shoulders, both hips, a knee or ankle on each leg, and at least
    ``min_visible`` of the 18 body points visible. ``body`` is ``(t, 18, 2)``."""
    shown = visible(body)
    ok = shown[:, list(REQUIRED_JOINTS)].all(axis=1)
    for leg in LEG_JOINTS:
        ok &= shown[:, list(leg)].any(axis=1)
    return ok & (shown.sum(axis=1) >= min_visible)


@dataclass(frozen=True)
class AnchorPool:
    """Anchor poses, one frame each.

    Attributes:
        points: ``(n, 130, 2)`` float32 packed keypoints.
        frame_sizes: ``(n, 2)`` int64 ``(height, width)`` of each anchor's frame.
        provenance: ``n`` strings saying where each anchor came from.
    """

    points: np.ndarray
    frame_sizes: np.ndarray
    provenance: tuple[str, ...]

    def __post_init__(self) -> None:
        points = np.asarray(self.points)
        if points.ndim != 3 or points.shape[0] == 0:
            raise AnchorPoolError(
                f"an empty anchor pool is an error at start-up, not mid-training: got points of shape {points.shape}; "
                "build one with `animatex-train anchor-pool --shards ... --output pool.npy` or add anchors from files"
            )
        if points.shape[1:] != (NUM_POINTS, 2):
            raise AnchorPoolError(f"anchor pool points must have shape (n, {NUM_POINTS}, 2), got {points.shape}")
        n = points.shape[0]
        if np.shape(self.frame_sizes) != (n, 2) or len(self.provenance) != n:
            raise AnchorPoolError(
                f"anchor pool: {n} anchors but frame_sizes {np.shape(self.frame_sizes)} and {len(self.provenance)} "
                "provenance entries; the sidecar JSON must list one of each per anchor"
            )
        object.__setattr__(self, "points", points.astype(np.float32, copy=False))
        object.__setattr__(self, "frame_sizes", np.asarray(self.frame_sizes, dtype=np.int64))
        object.__setattr__(self, "provenance", tuple(str(p) for p in self.provenance))
        for i in range(n):
            label = f"anchor {i} ({self.provenance[i]})"
            try:
                validate_coordinates(self.points[i], label)
            except KeypointError as error:
                raise AnchorPoolError(str(error)) from error
            if not visible(self.points[i, BODY["neck"]]):
                raise AnchorPoolError(f"{label}: the neck is missing; realignment needs it, remove this anchor")
            if (self.frame_sizes[i] < 1).any():
                raise AnchorPoolError(f"{label}: frame size must be positive, got {self.frame_sizes[i].tolist()}")

    def __len__(self) -> int:
        return int(self.points.shape[0])

    def anchor(self, index: int) -> PoseSequence:
        """Anchor ``index`` as a one-frame pose."""
        height, width = (int(v) for v in self.frame_sizes[index])
        return PoseSequence.from_array(self.points[index : index + 1], (height, width), name=f"anchor {index}")

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (``.npy``) and its sidecar ``.json``; returns the ``.npy`` path written."""
        path = _npy_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, self.points, allow_pickle=False)
        sidecar = {
            "format": POOL_FORMAT,
            "version": POOL_VERSION,
            "num_anchors": len(self),
            "frame_sizes": self.frame_sizes.tolist(),
            "provenance": list(self.provenance),
        }
        path.with_suffix(".json").write_text(json.dumps(sidecar, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> AnchorPool:
        """Read a pool written by ``save``; raises ``AnchorPoolError`` if it is missing, malformed or empty."""
        path = _npy_path(path)
        sidecar_path = path.with_suffix(".json")
        if not path.is_file() or not sidecar_path.is_file():
            raise AnchorPoolError(f"anchor pool {path}: need both {path.name} and {sidecar_path.name}")
        sidecar = json.loads(sidecar_path.read_text())
        if sidecar.get("format") != POOL_FORMAT or sidecar.get("version") != POOL_VERSION:
            raise AnchorPoolError(
                f"anchor pool {sidecar_path}: format {sidecar.get('format')!r} version {sidecar.get('version')!r}, "
                f"expected {POOL_FORMAT!r} version {POOL_VERSION}"
            )
        points = np.load(path, allow_pickle=False)
        return cls(points, np.asarray(sidecar["frame_sizes"]).reshape(-1, 2), tuple(sidecar["provenance"]))

    def add_from_files(
        self, paths: Sequence[str | Path], default_frame_size: tuple[int, int] = DEFAULT_FRAME_SIZE
    ) -> AnchorPool:
        """A new pool with the anchors of ``paths`` appended (see ``load_anchor_file`` for the formats)."""
        parts = [(self.points, self.frame_sizes, list(self.provenance))]
        parts += [load_anchor_file(p, default_frame_size) for p in paths]
        return AnchorPool(
            np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), sum((p[2] for p in parts), [])
        )

    @classmethod
    def from_files(
        cls, paths: Sequence[str | Path], default_frame_size: tuple[int, int] = DEFAULT_FRAME_SIZE
    ) -> AnchorPool:
        """A pool made only of anchors from files (anthropomorphic characters, hand-made poses)."""
        parts = [load_anchor_file(p, default_frame_size) for p in paths]
        if not parts:
            raise AnchorPoolError("an empty anchor pool is an error at start-up, not mid-training: no anchor files")
        return cls(
            np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), sum((p[2] for p in parts), [])
        )


def _npy_path(path: str | Path) -> Path:
    path = Path(path)
    return path if path.suffix == ".npy" else path.with_name(path.name + ".npy")


def load_anchor_file(
    path: str | Path, default_frame_size: tuple[int, int] = DEFAULT_FRAME_SIZE
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read anchors from a file: ``(points (k, 130, 2), frame_sizes (k, 2), provenance)``.

    Formats:
        * ``.npy``: float32 ``(k, 130, 2)``, ``(k, 62, 2)`` or ``(130, 2)`` packed keypoints; frame sizes and
          provenance from a sidecar ``.json`` next to it if there is one (a saved pool), else
          ``default_frame_size``.
        * ``.json``: a list of 18 body points ``[x, y]`` (normalised; ``null`` or ``[-1, -1]`` = missing) in
          ``BODY_NAMES`` order, or an object ``{"body": [...18], "frame_size": [h, w], "units": "normalised" |
          "pixels"}``, or a list of such objects.
    """
    path = Path(path)
    if not path.is_file():
        raise AnchorPoolError(f"anchor file {path} does not exist")
    if path.suffix == ".npy":
        points = np.load(path, allow_pickle=False).astype(np.float32)
        points = points[None] if points.ndim == 2 else points
        if points.ndim != 3 or points.shape[1:] not in ((NUM_POINTS, 2), (62, 2)):
            raise AnchorPoolError(f"anchor file {path}: expected (k, {NUM_POINTS}, 2) keypoints, got {points.shape}")
        packed = np.full((points.shape[0], NUM_POINTS, 2), MISSING, dtype=np.float32)
        packed[:, : points.shape[1]] = points
        sidecar = path.with_suffix(".json")
        if sidecar.is_file():
            meta = json.loads(sidecar.read_text())
            return packed, np.asarray(meta["frame_sizes"]).reshape(-1, 2), [str(p) for p in meta["provenance"]]
        sizes = np.tile(np.asarray(default_frame_size, dtype=np.int64), (len(packed), 1))
        return packed, sizes, [f"{path}#{i}" for i in range(len(packed))]
    if path.suffix == ".json":
        content = json.loads(path.read_text())
        entries = content if isinstance(content, list) and content and isinstance(content[0], dict) else [content]
        rows = [_json_anchor(entry, default_frame_size, f"{path}#{i}") for i, entry in enumerate(entries)]
        return (
            np.stack([r[0] for r in rows]),
            np.array([r[1] for r in rows], dtype=np.int64),
            [f"{path}#{i}" for i in range(len(rows))],
        )
    raise AnchorPoolError(f"anchor file {path}: unknown format {path.suffix!r}; use .npy or .json")


def _json_anchor(entry: object, default_frame_size: tuple[int, int], label: str) -> tuple[np.ndarray, tuple[int, int]]:
    frame_size, units, body = default_frame_size, "normalised", entry
    if isinstance(entry, dict):
        frame_size = tuple(entry.get("frame_size", default_frame_size))
        units = entry.get("units", "normalised")
        body = entry.get("body")
    if not isinstance(body, list) or len(body) != NUM_BODY:
        raise AnchorPoolError(f"{label}: expected a list of {NUM_BODY} body points [x, y], got {body!r:.80}")
    if units not in ("normalised", "pixels"):
        raise AnchorPoolError(f"{label}: units must be 'normalised' or 'pixels', got {units!r}")
    points = np.full((NUM_POINTS, 2), MISSING, dtype=np.float32)
    for j, point in enumerate(body):
        if point is None or list(point) == [MISSING, MISSING]:
            continue
        x, y = float(point[0]), float(point[1])
        if units == "pixels":
            x, y = x / frame_size[1], y / frame_size[0]
        points[POINT_SLICES["body"].start + j] = (x, y)
    return points, (int(frame_size[0]), int(frame_size[1]))


def build_anchor_pool(
    pose_sequences: Iterable[PoseSequence | tuple[str, PoseSequence]],
    num_anchors: int,
    seed: int,
    min_visible: int = 12,
    max_per_sequence: int = 1,
) -> AnchorPool:
    """Sample ``num_anchors`` valid full-body frames (``is_full_body``) uniformly from a stream of clips.

    Uses bottom-k sampling: every kept frame gets a uniform random key and the smallest keys win, so the stream
    is read once with bounded memory and the result depends only on ``seed`` and the stream's order. At most
    ``max_per_sequence`` frames come from one clip: a clip shows one person, so more frames add poses, not body
    shapes.

    Args:
        pose_sequences: clips, optionally as ``(name, pose)`` pairs; the name is kept as provenance.
        num_anchors: pool size (fewer if the stream has fewer eligible frames).
        seed: sampling seed.
        min_visible: minimum number of visible body points of an anchor frame.
        max_per_sequence: cap on frames taken from one clip.

    Raises:
        AnchorPoolError: no eligible frame in the whole stream.
    """
    if num_anchors < 1 or max_per_sequence < 1:
        raise ValueError(f"num_anchors and max_per_sequence must be >= 1, got {num_anchors}, {max_per_sequence}")
    rng = np.random.default_rng(seed)
    # Max-heap on the key (negated); the running count breaks ties so arrays are never compared.
    heap: list[tuple[float, int, np.ndarray, tuple[int, int], str]] = []
    num_sequences = count = 0
    for index, item in enumerate(pose_sequences):
        name, pose = item if isinstance(item, tuple) else (f"sequence {index}", item)
        num_sequences += 1
        frames = np.flatnonzero(is_full_body(pose.body, min_visible))
        if len(frames) == 0:
            continue
        if len(frames) > max_per_sequence:
            frames = np.sort(rng.choice(frames, size=max_per_sequence, replace=False))
        keys = rng.random(len(frames))
        packed = None
        for frame, key in zip(frames.tolist(), keys.tolist(), strict=True):
            if len(heap) == num_anchors and -heap[0][0] <= key:
                continue
            packed = pose.to_array() if packed is None else packed
            count += 1
            entry = (-key, count, packed[frame].copy(), pose.frame_size, f"{name}#frame{frame}")
            if len(heap) < num_anchors:
                heapq.heappush(heap, entry)
            else:
                heapq.heapreplace(heap, entry)
    if not heap:
        raise AnchorPoolError(
            f"an empty anchor pool is an error at start-up, not mid-training: none of {num_sequences} clips has a "
            f"full-body frame (nose, neck, shoulders, hips, a knee or ankle per leg, >= {min_visible} body points)"
        )
    chosen = sorted(heap, key=lambda e: -e[0])
    return AnchorPool(
        np.stack([e[2] for e in chosen]), np.array([e[3] for e in chosen], dtype=np.int64), tuple(e[4] for e in chosen)
    )


def expand_shard_paths(specs: Sequence[str]) -> list[Path]:
    """Shard paths from specs: a ``.tar`` file, a directory (its ``*.tar``), a ``.txt`` list (one spec a line,
    as in the top-level ``data/`` manifests) or a glob pattern. Order is kept; directories and globs are sorted."""
    paths: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found = sorted(path.glob("*.tar"))
        elif path.suffix == ".txt" and path.is_file():
            lines = [line.strip() for line in path.read_text().splitlines()]
            found = expand_shard_paths([line for line in lines if line and not line.startswith("#")])
        elif path.is_file():
            found = [path]
        else:
            found = [Path(p) for p in sorted(glob.glob(spec))]
        if not found:
            raise FileNotFoundError(f"shard spec {spec!r} matches no .tar file")
        paths.extend(found)
    return paths


def iter_shard_poses(
    shard_paths: Iterable[str | Path], split: str | None = "train"
) -> Iterator[tuple[str, PoseSequence]]:
    """Yield ``(key, pose)`` of every sample in WebDataset tar shards, reading only ``<key>.pose.npy`` and
    ``<key>.meta.json`` (``schema.POSE``, ``schema.META``); other members are skipped unread.

    Args:
        shard_paths: tar files, read in order.
        split: keep only samples whose ``meta.json`` split matches; None keeps all.

    Raises:
        SampleError: a malformed member; the message names the shard and the sample key.
    """
    for shard in shard_paths:
        incomplete = []
        for key, members in iter_samples(str(shard), only=(POSE, META)):
            if len(members) < 2:
                incomplete.append(key)
                continue
            sample = _decode_pose_sample(members, key, str(shard))
            if sample is not None and (split is None or sample[0].split == split):
                yield key, sample[1]
        if incomplete:
            log.warning(
                "%s: %d sample(s) lack %s or %s, skipped: %s", shard, len(incomplete), POSE, META, incomplete[:3]
            )


def _decode_pose_sample(members: dict[str, bytes], key: str, shard: str) -> tuple[ClipMeta, PoseSequence] | None:
    label = f"shard {shard} sample {key!r}"
    try:
        meta = ClipMeta(**json.loads(members[META].decode()))
    except (ValueError, TypeError) as error:
        raise SampleError(f"{label}: member {META!r} is not valid clip metadata ({error})") from error
    try:
        array = np.load(io.BytesIO(members[POSE]), allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise SampleError(f"{label}: member {POSE!r} is not a readable .npy array ({error})") from error
    try:
        pose = PoseSequence.from_array(array, (meta.height, meta.width), name=f"{label} {POSE}")
    except KeypointError as error:
        raise SampleError(str(error)) from error
    return meta, pose


def anchor_pool_from_sources(
    shards: Sequence[str],
    add: Sequence[str] = (),
    num_anchors: int = 1000,
    seed: int = 0,
    min_visible: int = 12,
    max_per_clip: int = 1,
    split: str | None = "train",
    default_frame_size: tuple[int, int] = DEFAULT_FRAME_SIZE,
) -> AnchorPool:
    """The pool of ``animatex-train anchor-pool``: sampled from prepared shards, plus anchor files (``add``).

    Args:
        shards: ``.tar`` files, directories, ``.txt`` shard lists or globs (``expand_shard_paths``); may be empty.
        add: extra anchor files (``.npy`` or ``.json``), e.g. cartoon poses.
        num_anchors, seed, min_visible: as ``build_anchor_pool``.
        max_per_clip: most anchors taken from one clip.
        split: the ``meta.json`` split to read; None reads every split.
        default_frame_size: ``(height, width)`` of anchor files that do not state one.
    """
    if not shards and not add:
        raise AnchorPoolError("no source: give shards and/or anchor files")
    if not shards:
        return AnchorPool.from_files(add, default_frame_size)
    poses = iter_shard_poses(expand_shard_paths(shards), split)
    pool = build_anchor_pool(poses, num_anchors, seed, min_visible, max_per_clip)
    return pool.add_from_files(add, default_frame_size) if add else pool


__all__ = [
    "AnchorPool",
    "AnchorPoolError",
    "REQUIRED_JOINTS",
    "anchor_pool_from_sources",
    "build_anchor_pool",
    "expand_shard_paths",
    "is_full_body",
    "iter_shard_poses",
    "load_anchor_file",
]
