"""``VideoDataModule``: prepared datasets (manifests) -> exactly resumable training and validation loaders.

Reads one or more dataset manifests (a weighted mixture), checks before training starts that every
shard is there (and, optionally, its checksum), that the samples fit the training window and that
the explicit pose indicator has its anchor pool, then serves ``ShardStreamLoader`` s whose position
travels in Lightning checkpoints.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl

from animatex_train.data.epi.anchor_pool import AnchorPool
from animatex_train.data.epi.transform import EPIConfig, EPITransform
from animatex_train.data.format.manifest import DatasetManifest
from animatex_train.data.format.schema import SampleError, decode_clip
from animatex_train.data.format.shard_reader import iter_samples
from animatex_train.data.loading.epoch_plan import DataIndex, Layout, ShardInfo, batches_per_rank
from animatex_train.data.loading.loader import ShardStreamLoader
from animatex_train.data.loading.sample_assembly import WindowConfig
from animatex_train.data.loading.stream import ShardStream, StreamSettings

log = logging.getLogger(__name__)


@dataclass
class DatasetSource:
    """One prepared dataset in a mixture.

    Attributes:
        manifest: path of its ``manifest.json``.
        weight: passes over it per epoch (2.0 = every sample twice, 0.5 = half of its shards, re-drawn each epoch).
        split: which split's shards to use.
    """

    manifest: str
    weight: float = 1.0
    split: str = "train"


class DataConfigError(ValueError):
    """The data configuration cannot work; raised before training starts, naming the key and the fix."""


def load_index(sources: list[DatasetSource], verify_hashes: bool = False, allow_remote_urls: bool = False) -> DataIndex:
    """The weighted mixture of the sources' shards, after checking the shards exist (remote ones: are allowed)."""
    datasets, weights = [], []
    for source in sources:
        manifest = DatasetManifest.load(source.manifest)
        manifest.verify_shards(check_hash=verify_hashes, allow_remote_urls=allow_remote_urls)
        shards = []
        for entry in manifest.select(source.split):
            if len(entry.resolutions) != 1:
                raise DataConfigError(
                    f"{source.manifest}: shard {entry.path} mixes resolutions {sorted(entry.resolutions)}; the loader "
                    "batches one resolution bucket at a time, so prepare one bucket per shard"
                )
            height, width = (int(v) for v in next(iter(entry.resolutions)).split("x"))
            frames = (manifest.num_frames_per_clip,) * entry.num_samples
            shards.append(ShardInfo(manifest.shard_url(entry), tuple(entry.keys), frames, height, width))
        if not shards:
            raise DataConfigError(f"data: {source.manifest} has no shards of split {source.split!r}")
        if source.weight <= 0:
            raise DataConfigError(f"data: weight of {source.manifest} must be > 0, got {source.weight}")
        datasets.append(tuple(shards))
        weights.append(float(source.weight))
    return DataIndex(tuple(datasets), tuple(weights))


class VideoDataModule(pl.LightningDataModule):
    """Training and validation clips from prepared WebDataset shards.

    Args:
        train: the training datasets (manifests and weights).
        val: the validation datasets; none disables validation data.
        batch_size: clips per batch per rank (micro-batch).
        num_workers: loader processes per rank (0 = load in the training process).
        num_frames: generated frames per clip (the paper: 32).
        frame_stride: stride between used frames, in stored frames.
        shuffle_buffer: samples held by each worker's shuffle buffer.
        seed: seed of the data order, windows, references, latent sampling and EPI draws.
        epi: the explicit pose indicator's transform (``EPIConfig``, default: the paper's); ``apply_prob: 0``
            disables it.
        anchor_pool: the EPI anchor pool file (``animatex-train anchor-pool``), required when EPI realigns or adds.
        val_batch_size: clips per validation batch.
        allow_remote_urls: allow ``pipe:``/remote shard URLs (they run shell commands; trusted manifests only).
        pin_memory: pin host batches for faster device copies.
        loader_timeout_s: a worker that produces nothing for this long fails the run instead of hanging it.
        verify_shard_hashes: check every shard's sha256 before training (reads all shards once).
    """

    def __init__(
        self,
        train: list[DatasetSource],
        val: list[DatasetSource] | None = None,
        batch_size: int = 1,
        num_workers: int = 2,
        num_frames: int = 32,
        frame_stride: int = 1,
        shuffle_buffer: int = 16,
        seed: int = 0,
        epi: EPIConfig = EPIConfig(),  # noqa: B008 - frozen, so one shared default is safe
        anchor_pool: str | None = None,
        val_batch_size: int = 1,
        allow_remote_urls: bool = False,
        pin_memory: bool = True,
        loader_timeout_s: float = 600.0,
        verify_shard_hashes: bool = False,
    ):
        super().__init__()
        if epi is None:  # the Python API's "default"
            epi = EPIConfig()
        elif isinstance(epi, dict):
            epi = EPIConfig.from_overrides(epi)
        if batch_size < 1 or num_workers < 0 or shuffle_buffer < 1:
            raise DataConfigError(
                f"data: batch_size >= 1, num_workers >= 0, shuffle_buffer >= 1 expected; got {batch_size}, "
                f"{num_workers}, {shuffle_buffer}"
            )
        self.train_sources, self.val_sources = list(train), list(val or [])
        self.batch_size, self.val_batch_size, self.num_workers = batch_size, val_batch_size, num_workers
        self.window = WindowConfig(num_frames, frame_stride)
        self.shuffle_buffer, self.seed, self.epi, self.anchor_pool = shuffle_buffer, seed, epi, anchor_pool
        self.allow_remote_urls, self.pin_memory, self.loader_timeout_s = allow_remote_urls, pin_memory, loader_timeout_s
        self.verify_shard_hashes = verify_shard_hashes
        self.train_index: DataIndex | None = None
        self.val_index: DataIndex | None = None
        self.clip_dim = 0

    def setup(self, stage: str) -> None:
        if self.train_index is None:
            self.train_index = load_index(self.train_sources, self.verify_shard_hashes, self.allow_remote_urls)
            self.clip_dim = self._preflight(self.train_index)
            if self.epi.does_anything:  # an empty or missing anchor pool fails here, not in a worker mid-epoch
                EPITransform(self.epi, AnchorPool.load(self.anchor_pool) if self.anchor_pool else None, self.seed)
        if self.val_sources and self.val_index is None:
            self.val_index = load_index(self.val_sources, self.verify_shard_hashes, self.allow_remote_urls)
            self._preflight(self.val_index)

    def _preflight(self, index: DataIndex) -> int:
        """Decode the first sample of the first shard: schema version, CLIP width and window length."""
        first = index.datasets[0][0]
        wanted = first.keys[0]  # the first planned sample: a foreign group ahead of it in the tar is not read as it
        found = next(
            ((key, members) for key, members in iter_samples(first.url, self.allow_remote_urls) if key == wanted), None
        )
        if found is None:
            raise SampleError(
                f"shard {first.url!r}: its first manifest sample {wanted!r} is not in the tar; re-run "
                "`animatex-train prepare` or refresh the manifest"
            )
        try:
            record = decode_clip({"__key__": wanted, "__url__": first.url, **found[1]})
        except SampleError as error:
            raise SampleError(f"shard {first.url!r}: {error}") from error
        longest = max(n for shards in index.datasets for s in shards for n in s.num_frames)
        if longest < self.window.span:
            raise DataConfigError(
                f"data: clips have at most {longest} frames but num_frames={self.window.num_frames} with "
                f"frame_stride={self.window.frame_stride} needs {self.window.span}; lower data.num_frames or "
                "re-prepare longer clips"
            )
        return int(record.clip_embeds.shape[1])

    def _layout(self, batch_size: int, shuffle_buffer: int, num_workers: int | None = None) -> Layout:
        trainer = self.trainer
        world = trainer.world_size if trainer is not None else 1
        workers = self.num_workers if num_workers is None else num_workers
        return Layout(world, max(1, workers), batch_size, shuffle_buffer, self.seed)

    def _validation_workers(self, index: DataIndex) -> int:
        """``num_workers``, lowered until every worker of every rank can fill a validation batch.

        A validation set is often a handful of clips: 3 clips with 6 workers per rank failed the first GPU run of
        the paper recipe. Its order does not matter for resuming, so fewer workers are harmless there (training
        keeps the configured count, which its exact-resume position depends on, and fails clearly instead).
        """
        workers = self.num_workers
        while workers > 1 and not batches_per_rank(
            index, 0, self.window.span, [], self._layout(self.val_batch_size, 1, workers)
        ):
            workers -= 1
        if workers != self.num_workers:
            log.info(
                "validation: %d loader worker(s) instead of data.num_workers=%d (%d validation clips)",
                workers,
                self.num_workers,
                sum(len(s.keys) for shards in index.datasets for s in shards),
            )
        return workers

    def _rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    def _loader(
        self, index: DataIndex, layout: Layout, epi: EPIConfig | None, validation: bool, num_workers: int | None = None
    ) -> ShardStreamLoader:
        settings = StreamSettings(
            index, layout, self._rank(), self.window, self.clip_dim, epi, self.anchor_pool, self.allow_remote_urls
        )
        if batches_per_rank(index, 0, self.window.span, [], layout) == 0:
            total = sum(len(s.keys) for shards in index.datasets for s in shards)
            raise DataConfigError(
                f"data: {total} samples cannot fill one batch on each of {layout.world_size} rank(s) x "
                f"{layout.workers} worker(s) x batch {layout.batch_size}; lower data.num_workers or the batch size"
            )
        workers = self.num_workers if num_workers is None else num_workers
        return ShardStreamLoader(
            ShardStream(settings), workers, self.pin_memory, self.loader_timeout_s, repeat_first_epoch=validation
        )

    def train_dataloader(self) -> ShardStreamLoader:
        self.setup("fit")
        return self._loader(self.train_index, self._layout(self.batch_size, self.shuffle_buffer), self.epi, False)

    def val_dataloader(self) -> ShardStreamLoader | list:
        self.setup("validate")
        if self.val_index is None:
            return []
        workers = self._validation_workers(self.val_index)
        return self._loader(self.val_index, self._layout(self.val_batch_size, 1, workers), None, True, workers)


def manifest_path(path: str | Path) -> str:
    """Accept a dataset folder or its manifest file."""
    path = Path(path)
    return str(path / "manifest.json") if path.is_dir() else str(path)
