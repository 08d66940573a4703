"""A small validation set with many loader workers: the validation loader uses fewer workers instead of failing.

Found on the first GPU run: the paper recipe's 6 workers per rank and a 3-clip validation split stopped ``fit``
before the first step ("3 samples cannot fill one batch on each of 1 rank(s) x 6 worker(s)").
"""

from __future__ import annotations

import pytest
from support.tiny_dataset import build_tiny_dataset

from animatex_train.data.loading.datamodule import DataConfigError, DatasetSource, VideoDataModule


def _module(manifest, workers: int) -> VideoDataModule:
    return VideoDataModule(
        train=[DatasetSource(str(manifest))],
        val=[DatasetSource(str(manifest), split="val")],
        batch_size=1,
        num_workers=workers,
        num_frames=8,
        epi={"apply_prob": 0.0},
        pin_memory=False,
        shuffle_buffer=2,
    )


def test_validation_loader_lowers_workers_to_what_the_split_can_fill(tmp_path):
    manifest = build_tiny_dataset(tmp_path, num_train_shards=2, per_shard=4, num_val_shards=1)  # 4 val clips
    module = _module(manifest, workers=6)
    loader = module.val_dataloader()
    assert loader.num_workers == 4
    keys = [key for batch in loader for key in batch.keys]
    assert sorted(keys) == sorted(k for s in module.val_index.datasets[0] for k in s.keys)  # each clip once


def test_training_loader_keeps_its_workers_and_says_why_it_cannot(tmp_path):
    manifest = build_tiny_dataset(tmp_path, num_train_shards=1, per_shard=4, num_val_shards=1)
    with pytest.raises(DataConfigError, match="lower data.num_workers"):
        _module(manifest, workers=6).train_dataloader()
