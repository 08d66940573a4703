"""The streaming loader: exactly-once epochs, equal steps per rank, exact resume, layout changes, bad data."""

from __future__ import annotations

import io
import logging
import pickle
import tarfile
from collections import Counter
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing  # noqa: F401  (registers torch's tensor reductions with ForkingPickler)
from support.shards import index_of, make_record, write_shards, write_tar

from animatex_train.data.format.schema import encode_clip
from animatex_train.data.format.shard_reader import ShardReadError, open_shard
from animatex_train.data.loading.epoch_plan import DataIndex, Layout, ShardInfo
from animatex_train.data.loading.loader import ResumeError, ShardStreamLoader
from animatex_train.data.loading.sample_assembly import WindowConfig
from animatex_train.data.loading.stream import ShardStream, StreamSettings

WINDOW = WindowConfig(num_frames=4)


def loader(
    index: DataIndex, rank: int = 0, world: int = 1, workers: int = 0, batch: int = 2, buffer: int = 4, seed: int = 0
) -> ShardStreamLoader:
    layout = Layout(world_size=world, workers=max(1, workers), batch_size=batch, shuffle_buffer=buffer, seed=seed)
    return ShardStreamLoader(ShardStream(StreamSettings(index, layout, rank, WINDOW, clip_dim=8)), num_workers=workers)


def take(dl: ShardStreamLoader, n: int | None = None) -> list:
    out = []
    for i, batch in enumerate(dl):
        out.append(batch)
        if n is not None and i + 1 == n:
            break
    return out


def keys(batches) -> list[str]:
    return [k for b in batches for k in b.keys]


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> DataIndex:
    # 8 shards x 8 clips = 64 samples: 2 ranks x 2 workers x batch 2 divides it, so an epoch uses all of them
    return index_of(write_shards(tmp_path_factory.mktemp("shards"), num_shards=8, per_shard=8))


def all_keys(index: DataIndex) -> set[str]:
    return {k for shards in index.datasets for s in shards for k in s.keys}


def test_epoch_covers_every_sample_exactly_once_with_equal_steps(index):
    per_rank = [take(loader(index, rank=r, world=2, workers=2)) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == len(loader(index, rank=0, world=2, workers=2)) == 16
    seen = keys(per_rank[0]) + keys(per_rank[1])
    assert Counter(seen) == Counter(all_keys(index))


def test_ranks_get_different_shards_each_epoch(index):
    dl = loader(index, rank=0, world=2, workers=2)
    first, second = set(keys(take(dl))), set(keys(take(dl)))
    assert dl.epoch == 1 and first != second


def test_workers_and_main_process_agree(index):
    """The same layout gives the same batches whether workers are processes or not."""
    a = take(loader(index, rank=1, world=2, workers=2))
    layout_keys = keys(a)
    assert len(layout_keys) == 32
    b = take(loader(index, rank=1, world=2, workers=2))
    for x, y in zip(a, b, strict=True):
        assert x.keys == y.keys and torch.equal(x.latent_std, y.latent_std)
        assert torch.equal(x.pose_images, y.pose_images)


@pytest.mark.parametrize("stop_after", [1, 5, 16])
def test_resume_continues_with_exactly_the_next_batches(index, stop_after):
    uninterrupted = loader(index, rank=1, world=2, workers=2)
    reference = take(uninterrupted) + take(uninterrupted)  # epochs 0 and 1
    interrupted = loader(index, rank=1, world=2, workers=2)
    take(interrupted, stop_after)
    state = interrupted.state_dict()
    resumed = loader(index, rank=1, world=2, workers=2)
    resumed.load_state_dict(state)
    rest = take(resumed)
    if stop_after == 16:  # stopped at the end of the epoch: the next iteration is the next epoch
        assert resumed.epoch == 1
    expected = reference[stop_after : stop_after + len(rest)]
    assert [b.keys for b in rest] == [b.keys for b in expected]
    for x, y in zip(rest, expected, strict=True):
        assert torch.equal(x.latent_mean, y.latent_mean) and torch.equal(x.ipi_keypoints, y.ipi_keypoints)
        assert torch.equal(x.pose_images, y.pose_images) and torch.equal(x.ref_image, y.ref_image)


@pytest.mark.parametrize("new_world,new_workers", [(1, 1), (3, 2), (2, 1)])
def test_world_size_change_on_resume_neither_loses_nor_repeats(index, new_world, new_workers):
    consumed = []
    state = None
    for rank in range(2):
        dl = loader(index, rank=rank, world=2, workers=2)
        consumed += keys(take(dl, 5))
        state = dl.state_dict()  # every rank is at the same position (lockstep); rank 0 and 1 agree
    rest = []
    lengths = []
    for rank in range(new_world):
        dl = loader(index, rank=rank, world=new_world, workers=new_workers)
        dl.load_state_dict(state)
        batches = take(dl)
        lengths.append(len(batches))
        rest += keys(batches)
        assert len(dl) == 5 + len(batches)  # Lightning counts the consumed part of the epoch too
    assert len(set(lengths)) == 1, "every rank must run the same number of steps"
    seen = Counter(consumed + rest)
    assert max(seen.values()) == 1, "a sample was repeated within the epoch"
    left_out = all_keys(index) - set(seen)
    assert len(left_out) < new_world * new_workers * 2, f"{len(left_out)} samples left out"


def test_changed_data_or_seed_refuses_to_resume(index, tmp_path):
    dl = loader(index)
    take(dl, 2)
    state = dl.state_dict()
    other = index_of(write_shards(tmp_path, 2, 4))
    with pytest.raises(ResumeError, match="training data changed"):
        loader(other).load_state_dict(state)
    with pytest.raises(ResumeError, match="seed"):
        loader(index, seed=1).load_state_dict(state)


def test_mixture_weights(tmp_path):
    a = write_shards(tmp_path / "a", 2, 4, prefix="a")
    b = write_shards(tmp_path / "b", 4, 4, prefix="b")
    seen = Counter(keys(take(loader(index_of(a, b, weights=(2.0, 0.5)), buffer=1))))
    assert all(seen[k] == 2 for s in a for k in s.keys)  # weight 2: every sample twice per epoch
    assert sum(seen[k] for s in b for k in s.keys) == 8  # weight 0.5: half of b's shards


def test_clips_shorter_than_the_window_are_left_out(tmp_path):
    short = write_shards(tmp_path / "s", 2, 4, frames=3, prefix="s")
    long = write_shards(tmp_path / "l", 2, 4, frames=6, prefix="l")
    seen = keys(take(loader(index_of(short + long))))
    assert seen and all(k.startswith("l") for k in seen)


def test_bad_shards_become_placeholders_with_warnings(tmp_path, caplog):
    good = list(write_shards(tmp_path, 3, 4, prefix="g"))
    # 1) a shard with a truncated tail
    truncated = tmp_path / "truncated.tar"
    records = [make_record("t000", c) for c in range(4)]
    write_tar(truncated, [encode_clip(r) for r in records])
    data = truncated.read_bytes()
    truncated.write_bytes(data[: int(len(data) * 0.6)])
    # 2) a shard where one sample lacks its latents and another carries a planted pickle
    canary = tmp_path / "canary"
    payload = pickle.dumps(_Canary(str(canary)))
    samples = [encode_clip(make_record("m000", c)) for c in range(4)]
    del samples[1]["latent_mean.npy"]
    samples[2]["evil.pyd"] = payload
    samples[3]["evil.pickle"] = payload
    mixed = tmp_path / "mixed.tar"
    write_tar(mixed, samples)
    shards = good + [
        ShardInfo(str(truncated), tuple(r.key for r in records), (6,) * 4, 32, 32),
        ShardInfo(str(mixed), tuple(f"m000-c{c:05d}" for c in range(4)), (6,) * 4, 32, 32),
    ]
    index = index_of(tuple(shards))
    with caplog.at_level(logging.WARNING):
        batches = [take(loader(index, rank=r, world=2, workers=0)) for r in range(2)]
    assert len(batches[0]) == len(batches[1]) == 5  # the ranks stay in step
    invalid = [k for rank in batches for b in rank for k, v in zip(b.keys, b.valid.tolist(), strict=True) if not v]
    assert "m000-c00001" in invalid and "m000-c00002" not in invalid and "m000-c00003" not in invalid
    assert any(k.startswith("t000") for k in invalid)
    text = caplog.text
    assert "truncated.tar" in text and "m000-c00001" in text and "latent_mean.npy" in text
    assert not canary.exists(), "a pickle member was unpickled"


class _Canary:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_remote_urls_need_explicit_permission(tmp_path):
    with pytest.raises(ShardReadError, match="allow_remote_urls"):
        open_shard(f"pipe:touch {tmp_path / 'canary'}")
    assert not (tmp_path / "canary").exists()


def test_tar_members_are_never_extracted(tmp_path):
    """A traversal member name is only a sample key; nothing is written anywhere."""
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        info = tarfile.TarInfo("../../outside.meta.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    from animatex_train.data.format.shard_reader import iter_samples

    assert [k for k, _ in iter_samples(str(evil))] == ["../../outside"]
    assert not (tmp_path.parent.parent / "outside.meta.json").exists()


def test_batch_is_one_buffer_across_processes_and_expands_pose_labels():
    from animatex_train.data.loading.batch import allocate_batch, clear_row
    from animatex_train.data.pose.style import POSE_PALETTE

    for shared in (True, False):  # a worker's batch lives in shared memory
        batch = allocate_batch(2, 3, (16, 8), clip_dim=4, shared=shared)
        assert batch.latent_mean.is_shared() == shared and not batch.valid.any() and not batch.latent_std.any()
        assert (batch.ipi_keypoints == -1).all() and not batch.pose_labels.any() and not batch.ref_image.any()
        assert batch.pose_crops.numel() == 0 and batch.pose_labels.shape == (2, 4, 16, 8)
    # Row 0 draws nothing; row 1 has a 2x3 crop at (3, 4) in frame 2 and a 1x1 crop at (15, 7) in frame 3.
    row1 = np.zeros((4, 4), np.int64)
    row1[2], row1[3] = (3, 4, 2, 3), (15, 7, 1, 1)
    batch = allocate_batch(2, 3, (16, 8), clip_dim=4, shared=True, pose_boxes=[None, row1])
    assert batch.pose_crops.numel() == 7 and batch.row_pose_crops(0).numel() == 0
    batch.keys[:] = ["a", "b"]
    batch.latent_mean.normal_()
    batch.row_pose_crops(1).copy_(torch.tensor([60, 0, 1, 2, 3, 4, 5], dtype=torch.uint8))
    # DataLoader's transport (torch's ForkingPickler, no custom reduction): the shared storage travels once.
    wire = bytes(ForkingPickler.dumps(batch))
    assert wire.count(b"rebuild_storage_fd") + wire.count(b"rebuild_storage_filename") == 1
    copy = pickle.loads(wire)
    assert copy.keys == ["a", "b"] and torch.equal(copy.latent_mean, batch.latent_mean)
    assert len({t.untyped_storage().data_ptr() for t in (copy.latent_mean, copy.pose_crops, copy.valid)}) == 1
    labels = copy.pose_labels
    expected = torch.zeros(2, 4, 16, 8, dtype=torch.uint8)
    expected[1, 2, 3:5, 4:7] = torch.tensor([[60, 0, 1], [2, 3, 4]])
    expected[1, 3, 15, 7] = 5
    assert torch.equal(labels, expected)
    rgb = copy.pose_images
    assert rgb.shape == (2, 3, 4, 16, 8) and rgb.dtype == torch.uint8 and rgb.is_contiguous()
    assert rgb[1, :, 2, 3, 4].tolist() == POSE_PALETTE[60].tolist()
    assert torch.equal(rgb, torch.from_numpy(POSE_PALETTE.copy())[expected.long()].permute(0, 4, 1, 2, 3))
    # Row selection and joining keep each row's crops with it.
    assert torch.equal(copy.head(1).pose_labels, expected[:1]) and copy.head(1).pose_crops.numel() == 0
    joined = type(copy).concat([copy, copy.head(1), copy])
    assert torch.equal(joined.pose_labels, torch.cat([expected, expected[:1], expected]))
    clear_row(copy, 1, "b")
    assert not copy.pose_labels.any() and copy.pose_boxes[1, 2].tolist() == [3, 4, 2, 3]
    batch.latent_std = torch.ones_like(batch.latent_std)  # a replaced field travels as its own tensor
    assert torch.equal(pickle.loads(pickle.dumps(batch)).latent_std, batch.latent_std)


def test_non_finite_latents_in_the_window_make_a_placeholder(tmp_path, caplog):
    records = [make_record("n000", c) for c in range(4)]
    records[1].latent_std[:] = np.float16("nan")
    path = tmp_path / "nan.tar"
    write_tar(path, [encode_clip(r) if i != 1 else _unchecked(r) for i, r in enumerate(records)])
    index = index_of((ShardInfo(str(path), tuple(r.key for r in records), (6,) * 4, 32, 32),))
    with caplog.at_level(logging.WARNING):
        batches = take(loader(index, workers=0))
    valid = {k: v for b in batches for k, v in zip(b.keys, b.valid.tolist(), strict=True)}
    assert valid == {"n000-c00000": True, "n000-c00001": False, "n000-c00002": True, "n000-c00003": True}
    assert "n000-c00001" in caplog.text and "NaN" in caplog.text


def _unchecked(record) -> dict:
    """``encode_clip`` without its validation (which would refuse the NaNs)."""
    from animatex_train.data.format import schema

    std = record.latent_std
    record.latent_std = np.zeros_like(std)
    sample = encode_clip(record)
    record.latent_std = std
    sample[schema.LATENT_STD] = schema._npy_bytes(std)
    return sample
