"""The dataset manifest: ``manifest.json`` next to the shards, written by ``animatex-train prepare``.

It lists every shard with its sample count, frame count, size, sha256, sample keys and source videos, so
the streaming loader can plan epochs (equal steps per rank) and check the shards before training starts
without opening them. ``data/SCHEMA.md`` documents the format; ``DatasetManifest.load`` checks it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from animatex_train.data.format.schema import SCHEMA_VERSION

MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"


class ManifestError(ValueError):
    """A manifest that is malformed or does not match its shards; the message says what and how to fix it."""


@dataclass(frozen=True)
class ShardEntry:
    """One shard.

    Attributes:
        path: POSIX path relative to the manifest's folder (no ``..``, not absolute), or a remote URL (``pipe:``,
            ``s3://``, ``https://``) read only with ``data.allow_remote_urls: true``.
        split: ``train``, ``val`` or ``test``; a shard holds one split only.
        num_samples: clips in the shard.
        num_frames: frames over all its clips.
        size_bytes: file size.
        sha256: hex digest of the file.
        keys: sample keys (``__key__``) in file order.
        source_videos: ids of the videos its clips come from, in file order.
        resolutions: ``"HxW"`` -> number of clips stored at that size.
    """

    path: str
    split: str
    num_samples: int
    num_frames: int
    size_bytes: int
    sha256: str
    keys: list[str]
    source_videos: list[str]
    resolutions: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class VideoEntry:
    """One source video that contributed clips.

    Attributes:
        video: path relative to the prepare input.
        video_id: the id in the sample keys.
        split: its split.
        source: where it came from (free text).
        licence: its licence (free text).
        num_clips: clips written.
        shard: the shard holding them.
    """

    video: str
    video_id: str
    split: str
    source: str
    licence: str
    num_clips: int
    shard: str


@dataclass
class DatasetManifest:
    """A prepared dataset.

    Attributes:
        name: dataset name.
        schema_version: the shard schema version (``data/format/schema.py``).
        resolutions_px: the ``[height, width]`` buckets clips were stored at.
        fps: the stored frame rate, or None when clips keep their source rate.
        num_frames_per_clip: frames per clip.
        encoders: role (``vae``, ``clip``, ``pose``) -> identity (settings and weights sha256).
        shards: every shard, sorted by path.
        videos: every video that contributed clips, sorted by path.
        num_rejects: lines in ``rejects.jsonl`` (videos and clips left out).
        manifest_version: version of this file's layout.
        root: the folder the manifest was loaded from (not stored).
    """

    name: str
    schema_version: int
    resolutions_px: list[tuple[int, int]]
    fps: float | None
    num_frames_per_clip: int
    encoders: dict[str, str]
    shards: list[ShardEntry]
    videos: list[VideoEntry] = field(default_factory=list)
    num_rejects: int = 0
    manifest_version: int = MANIFEST_VERSION
    root: Path | None = field(default=None, compare=False)

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)

    @property
    def splits(self) -> list[str]:
        return sorted({s.split for s in self.shards})

    def select(self, split: str | None = None) -> list[ShardEntry]:
        """The shards of ``split`` (all when None)."""
        return [s for s in self.shards if split is None or s.split == split]

    def shard_paths(self, split: str | None = None) -> list[Path]:
        """Absolute paths of the shards of ``split`` (all when None); needs ``root`` (set by ``load``)."""
        if self.root is None:
            raise ManifestError("this manifest was not loaded from a file; set manifest.root to its folder")
        return [self.root / s.path for s in self.select(split)]

    def shard_url(self, entry: ShardEntry) -> str:
        """Where the loader reads ``entry``: a remote URL as written (``pipe:``, ``s3:``, ...), else its local path."""
        if is_remote_url(entry.path):
            return entry.path
        if self.root is None:
            raise ManifestError("this manifest was not loaded from a file; set manifest.root to its folder")
        return str(self.root / entry.path)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("root")
        data["resolutions_px"] = [list(r) for r in self.resolutions_px]
        return data

    def save(self, path: str | Path) -> None:
        """Write atomically (temp file, fsync, rename); deterministic bytes for equal content."""
        path = Path(path)
        text = json.dumps(self.to_json(), sort_keys=True, indent=1) + "\n"
        temp = path.with_name(path.name + ".tmp")
        with temp.open("w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)

    @classmethod
    def load(cls, path: str | Path) -> DatasetManifest:
        """Read and validate a manifest (a folder means its ``manifest.json``).

        Raises:
            ManifestError: missing file, bad JSON, wrong types, unknown version, duplicate shards or keys, or
                unsafe shard paths; the message names the field.
        """
        path = Path(path)
        if path.is_dir():
            path = path / MANIFEST_NAME
        if not path.is_file():
            raise ManifestError(f"{path}: no such manifest; run `animatex-train prepare` (it writes {MANIFEST_NAME})")
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ManifestError(f"{path}: not readable JSON ({error})") from error
        manifest = _from_json(data, str(path))
        manifest.root = path.parent
        return manifest

    def verify_shards(self, check_hash: bool = True, allow_remote_urls: bool = False) -> None:
        """Check that every shard exists with its recorded size (and sha256); list every problem at once.

        A remote shard (``pipe:``, ``s3:``, ``http(s):`` ...) cannot be checked before it is read: it is refused
        unless ``allow_remote_urls`` (its commands run, trusted manifests only), then accepted as written.

        Raises:
            ManifestError: one line per missing, unreadable, resized or altered shard, or refused remote URL.
        """
        problems = []
        for shard, shard_path in zip(self.shards, self.shard_paths(), strict=True):
            if is_remote_url(shard.path):
                if not allow_remote_urls:
                    problems.append(
                        f"{shard.path}: a remote URL (it runs a command or reaches the network); set "
                        "data.allow_remote_urls: true if this manifest is trusted"
                    )
                continue
            if not shard_path.is_file():
                problems.append(f"{shard.path}: missing")
                continue
            size = shard_path.stat().st_size
            if size != shard.size_bytes:
                problems.append(f"{shard.path}: {size} bytes, the manifest says {shard.size_bytes}")
                continue
            try:  # as the loader will: a shard it cannot open would silently become placeholders every epoch
                with shard_path.open("rb") as handle:
                    handle.read(1)
            except OSError as error:
                problems.append(f"{shard.path}: unreadable ({error.strerror or error})")
                continue
            if check_hash and _sha256(shard_path) != shard.sha256:
                problems.append(f"{shard.path}: sha256 differs from the manifest (the file was altered or corrupted)")
        if problems:
            raise ManifestError(
                f"{len(problems)} of {len(self.shards)} shards under {self.root} fail verification:\n  "
                + "\n  ".join(problems)
                + "\nRe-run `animatex-train prepare` with the same settings to rebuild them."
            )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _field(data: dict[str, Any], key: str, kinds: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise ManifestError(f"{where}: missing field {key!r}")
    value = data[key]
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _as_tuple(kinds)):
        raise ManifestError(f"{where}: field {key!r} should be {_names(kinds)}, got {type(value).__name__}")
    return value


def _as_tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _names(kinds: type | tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in _as_tuple(kinds))


def is_remote_url(path: str) -> bool:
    """``pipe:cmd``, ``s3://...``, ``http(s)://...``: a scheme, not a Windows drive letter or a plain file name."""
    return bool(re.match(r"^[a-z][a-z0-9+.-]+:", path)) and not re.match(r"^[A-Za-z]:[\\/]", path)


def _safe_relative(path: str, where: str) -> str:
    if is_remote_url(path):  # not a file under the dataset folder: read only with data.allow_remote_urls
        return path
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or ".." in pure.parts or "\\" in path:
        raise ManifestError(f"{where}: shard path {path!r} must be relative, inside the dataset folder, without '..'")
    return path


def _from_json(data: Any, where: str) -> DatasetManifest:
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: expected a JSON object")
    version = _field(data, "manifest_version", int, where)
    if version != MANIFEST_VERSION:
        raise ManifestError(f"{where}: manifest_version {version}, this code reads {MANIFEST_VERSION}; re-run prepare")
    schema = _field(data, "schema_version", int, where)
    if schema != SCHEMA_VERSION:
        raise ManifestError(
            f"{where}: shards follow schema version {schema}, this code reads {SCHEMA_VERSION}; re-run prepare"
        )
    shards = []
    for i, raw in enumerate(_field(data, "shards", list, where)):
        at = f"{where} shards[{i}]"
        if not isinstance(raw, dict):
            raise ManifestError(f"{at}: expected an object")
        entry = ShardEntry(
            path=_safe_relative(_field(raw, "path", str, at), at),
            split=_field(raw, "split", str, at),
            num_samples=_field(raw, "num_samples", int, at),
            num_frames=_field(raw, "num_frames", int, at),
            size_bytes=_field(raw, "size_bytes", int, at),
            sha256=_field(raw, "sha256", str, at),
            keys=[str(k) for k in _field(raw, "keys", list, at)],
            source_videos=[str(v) for v in _field(raw, "source_videos", list, at)],
            resolutions={str(k): int(v) for k, v in raw.get("resolutions", {}).items()},
        )
        if entry.num_samples != len(entry.keys):
            raise ManifestError(f"{at}: num_samples {entry.num_samples} but {len(entry.keys)} keys")
        shards.append(entry)
    paths = [s.path for s in shards]
    if len(set(paths)) != len(paths):
        raise ManifestError(f"{where}: a shard is listed twice")
    keys = [k for s in shards for k in s.keys]
    if len(set(keys)) != len(keys):
        raise ManifestError(f"{where}: a sample key appears in more than one place; the dataset would repeat it")
    videos = []
    for i, raw in enumerate(data.get("videos", [])):
        at = f"{where} videos[{i}]"
        videos.append(
            VideoEntry(**{k: _field(raw, k, int if k == "num_clips" else str, at) for k in VideoEntry.__annotations__})
        )
    fps = data.get("fps")
    if fps is not None and not isinstance(fps, (int, float)):
        raise ManifestError(f"{where}: field 'fps' should be a number or null, got {type(fps).__name__}")
    return DatasetManifest(
        name=_field(data, "name", str, where),
        schema_version=schema,
        resolutions_px=[(int(h), int(w)) for h, w in _field(data, "resolutions_px", list, where)],
        fps=None if fps is None else float(fps),
        num_frames_per_clip=_field(data, "num_frames_per_clip", int, where),
        encoders={str(k): str(v) for k, v in _field(data, "encoders", dict, where).items()},
        shards=shards,
        videos=videos,
        num_rejects=int(data.get("num_rejects", 0)),
        manifest_version=version,
    )
