"""Byte-deterministic WebDataset shard writing: a video at a time, temp name + atomic rename.

webdataset's ``TarWriter`` turns a sample dict into tar members (sorted member order, fixed mtime, owner and
mode when asked); ``ShardWriter`` is not used because it closes shards at arbitrary samples and writes the
final name directly. Here:

* each video's samples are first written to a per-rank staging tar, so a video that fails halfway leaves
  nothing in the shard (its clips either all go in or none do);
* a finished video's members are copied into the open shard ``<name>.tar.tmp``;
* the shard is closed at the first video boundary at or past the target size, fsynced, hashed and renamed
  to its final name; the caller then journals it. A crash at any point leaves either no final file or a
  complete one identical to what a rerun writes.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webdataset import TarWriter

TAR_MTIME = 0  # fixed member metadata: the bytes of a shard depend only on its samples
TAR_OWNER = "animatex"
TAR_MODE = 0o444
TMP_SUFFIX = ".tmp"


def bucket_name(resolution: tuple[int, int]) -> str:
    """``"<height>x<width>"``, the name of a resolution bucket."""
    return f"{resolution[0]}x{resolution[1]}"


def shard_name(split: str, bucket: str, rank: int, index: int) -> str:
    """``shard-<split>-<HxW>-r<rank>-<index>.tar``; names sort by split, bucket, rank, index."""
    return f"shard-{split}-{bucket}-r{rank:03d}-{index:06d}.tar"


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (POSIX: the directory entry lives in the directory's own inode)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class ShardRecord:
    """A closed shard, as journaled and later listed in the manifest.

    Attributes:
        path: file name relative to the output folder.
        split: the split all its samples belong to.
        num_samples: clips in it.
        num_frames: frames over all its clips.
        size_bytes: file size.
        sha256: hex digest of the file.
        keys: sample keys in file order.
        source_videos: video ids in file order.
        resolutions: ``"HxW"`` -> number of clips at that size.
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

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "split": self.split,
            "num_samples": self.num_samples,
            "num_frames": self.num_frames,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "keys": self.keys,
            "source_videos": self.source_videos,
            "resolutions": self.resolutions,
        }


class VideoStaging:
    """The samples of one video, in a staging tar until the whole video has succeeded.

    Args:
        path: the staging file (overwritten).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("wb")
        self._writer = TarWriter(
            self._file, user=TAR_OWNER, group=TAR_OWNER, mode=TAR_MODE, encoder=False, mtime=TAR_MTIME
        )
        self.keys: list[str] = []
        self.num_frames = 0
        self.resolutions: dict[str, int] = {}
        self.closed = False

    def add(self, sample: dict[str, Any], num_frames: int, resolution: tuple[int, int]) -> None:
        """Stage one encoded sample (``schema.encode_clip`` output)."""
        self._writer.write(sample)
        self.keys.append(sample["__key__"])
        self.num_frames += num_frames
        name = bucket_name(resolution)
        self.resolutions[name] = self.resolutions.get(name, 0) + 1

    def close(self) -> None:
        if not self.closed:
            self._writer.close()
            self._file.close()
            self.closed = True

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


class ShardSequenceWriter:
    """The shard sequence of one split and one resolution bucket on one rank.

    A shard never mixes splits (a loader reads one split) or resolutions (a batch is one size).

    Args:
        output_dir: dataset folder.
        split: the split.
        bucket: the resolution bucket, ``"HxW"``.
        rank: this rank.
        next_index: index of the next shard (after the journaled ones).
        target_bytes: close a shard at the first video boundary at or past this many bytes.
    """

    def __init__(
        self, output_dir: Path, split: str, bucket: str, rank: int, next_index: int, target_bytes: int
    ) -> None:
        self.output_dir = output_dir
        self.split = split
        self.bucket = bucket
        self.rank = rank
        self.index = next_index
        self.target_bytes = target_bytes
        self._tar: tarfile.TarFile | None = None
        self._keys: list[str] = []
        self._videos: list[str] = []
        self._frames = 0
        self._resolutions: dict[str, int] = {}

    @property
    def final_path(self) -> Path:
        return self.output_dir / shard_name(self.split, self.bucket, self.rank, self.index)

    @property
    def temp_path(self) -> Path:
        return self.final_path.with_name(self.final_path.name + TMP_SUFFIX)

    def append_video(self, staging: VideoStaging, video_id: str) -> None:
        """Copy a finished video's staged members into the open shard (opening one if needed)."""
        staging.close()
        if self._tar is None:
            self._tar = tarfile.open(self.temp_path, mode="w", format=tarfile.USTAR_FORMAT)
        with tarfile.open(staging.path, mode="r") as staged:  # our own file, written just now
            for member in staged.getmembers():
                if not member.isfile():
                    raise RuntimeError(f"staging tar {staging.path} holds a non-file member {member.name!r}")
                self._tar.addfile(member, staged.extractfile(member))
        if set(staging.resolutions) - {self.bucket}:
            raise RuntimeError(f"staged clips of sizes {sorted(staging.resolutions)} sent to the {self.bucket} shards")
        self._keys.extend(staging.keys)
        self._videos.append(video_id)
        self._frames += staging.num_frames
        for name, count in staging.resolutions.items():
            self._resolutions[name] = self._resolutions.get(name, 0) + count
        staging.discard()

    def full(self) -> bool:
        """Whether the open shard has reached the target size (checked only between videos)."""
        return self._tar is not None and self._tar.offset >= self.target_bytes

    def finish(self) -> ShardRecord | None:
        """Close, fsync, hash and rename the open shard; None when nothing is open."""
        if self._tar is None:
            return None
        self._tar.close()
        with self.temp_path.open("rb+") as handle:
            os.fsync(handle.fileno())
        record = ShardRecord(
            path=self.final_path.name,
            split=self.split,
            num_samples=len(self._keys),
            num_frames=self._frames,
            size_bytes=self.temp_path.stat().st_size,
            sha256=sha256_file(self.temp_path),
            keys=list(self._keys),
            source_videos=list(self._videos),
            resolutions=dict(sorted(self._resolutions.items())),
        )
        os.replace(self.temp_path, self.final_path)
        fsync_dir(self.output_dir)
        self._tar, self._keys, self._videos, self._frames, self._resolutions = None, [], [], 0, {}
        self.index += 1
        return record


def remove_stale_temp_files(output_dir: Path, rank: int) -> list[Path]:
    """Delete this rank's leftovers of an interrupted run (temp shards, staging tar); never others' files."""
    stale = [p for p in output_dir.glob(f"shard-*-r{rank:03d}-*.tar{TMP_SUFFIX}")]
    stale += [p for p in output_dir.glob(f".staging-r{rank:03d}.tar")]
    for path in stale:
        path.unlink()
    return stale


def staging_path(output_dir: Path, rank: int) -> Path:
    return output_dir / f".staging-r{rank:03d}.tar"
