"""Tiny synthetic training shards written straight through the shard schema (loader tests)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import cv2
import numpy as np

from animatex_train.data.format.keypoints import PoseSequence
from animatex_train.data.format.schema import ClipMeta, ClipRecord, encode_clip
from animatex_train.data.loading.epoch_plan import DataIndex, ShardInfo


def make_record(
    video: str, clip: int, frames: int = 6, size: tuple[int, int] = (32, 32), clip_dim: int = 8, seed: int = 0
) -> ClipRecord:
    rng = np.random.default_rng(abs(hash((video, clip, seed))) % 2**32)
    h, w = size[0] // 8, size[1] // 8
    pose = PoseSequence.empty(frames, size)
    body = rng.uniform(0.2, 0.8, size=(frames, 18, 2)).astype(np.float32)
    pose = PoseSequence(body=body, feet=pose.feet, hands=pose.hands, face=None, frame_size=size)
    jpeg = cv2.imencode(".jpg", rng.integers(0, 255, size=(*size, 3), dtype=np.uint8))[1].tobytes()
    return ClipRecord(
        key=f"{video}-c{clip:05d}",
        meta=ClipMeta(
            video_id=video,
            clip_index=clip,
            frame_indices=list(range(frames)),
            fps=8.0,
            source_fps=8.0,
            height=size[0],
            width=size[1],
            ref_frames=[0, frames - 1],
            pose_source="synthetic",
        ),
        latent_mean=rng.standard_normal((frames, 4, h, w)).astype(np.float16),
        latent_std=np.abs(rng.standard_normal((frames, 4, h, w))).astype(np.float16) * 0.1,
        clip_embeds=rng.standard_normal((frames, clip_dim)).astype(np.float16),
        pose=pose,
        ref_jpegs=[jpeg, jpeg],
    )


def write_tar(path: Path, samples: list[dict]) -> None:
    with tarfile.open(path, "w") as tar:
        for sample in samples:
            for member, data in sample.items():
                if member == "__key__":
                    continue
                info = tarfile.TarInfo(f"{sample['__key__']}.{member}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def write_shards(
    root: Path, num_shards: int, per_shard: int, frames: int = 6, size=(32, 32), clip_dim: int = 8, prefix: str = "v"
) -> tuple[ShardInfo, ...]:
    """``num_shards`` tars of ``per_shard`` clips each; returns their ``ShardInfo``s."""
    root.mkdir(parents=True, exist_ok=True)
    infos = []
    for s in range(num_shards):
        records = [make_record(f"{prefix}{s:03d}", c, frames, size, clip_dim) for c in range(per_shard)]
        path = root / f"{prefix}-{s:04d}.tar"
        write_tar(path, [encode_clip(r) for r in records])
        infos.append(ShardInfo(str(path), tuple(r.key for r in records), (frames,) * per_shard, *size))
    return tuple(infos)


def index_of(*datasets: tuple[ShardInfo, ...], weights: tuple[float, ...] | None = None) -> DataIndex:
    return DataIndex(tuple(datasets), weights or (1.0,) * len(datasets))
