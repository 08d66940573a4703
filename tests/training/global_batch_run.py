"""One ``fit`` of the tiny recipe on a fixed sequence of samples, for the DDP-vs-one-process test.

    python global_batch_run.py --data DIR --out DIR --devices N --batch-size B --steps S

Every process reads the same samples in the same order (the dataset's one-rank order, no EPI), and a
plain map-style ``DataLoader`` serves them; a ``DistributedSampler`` without shuffling deals them
out, so rank r of N gets samples r, r + N, ... and the global batch of step s is the same set of
samples whatever N is. The system, the strategy and the optimizer are the real ones. Not a test module: run
as a script (Lightning's DDP launcher re-runs it once per extra rank) with ``tests/training`` on the path.
"""

# ruff: noqa: I001  (animatex_train first: its torchvision compat shim must precede lightning)
from __future__ import annotations

import animatex_train  # noqa: F401
import argparse
import sys
from pathlib import Path

import lightning.pytorch as pl
from strategy_probe import RunProbe
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from animatex_train.data.loading.batch import Batch
from animatex_train.data.loading.datamodule import DatasetSource, VideoDataModule
from animatex_train.cli.lightning import AnimateXCLI

TINY = Path(__file__).resolve().parents[2] / "recipes" / "debug" / "tiny_cpu.yaml"
# nn.Dropout masks and the official batch-coupled condition dropout depend on the batch's shape and
# composition, so they are switched off here; the timestep and noise draws are per sample (system.py).
NO_BATCH_COUPLED_RANDOMNESS = [
    "--model.denoiser.dropout=0",
    "--model.denoiser.temporal_conv_dropout=0",
    "--model.denoiser.adapter_dropout=0",
    "--model.denoiser.ipi.keypoint_dropout=0",
    "--model.denoiser.condition_dropout.enabled=false",
    "--model.conditioning.local_image_prob=1",
    "--model.conditioning.ref_latent_prob=0",
]


def concat_batches(batches: list[Batch]) -> Batch:
    """Rows of several batches as one batch."""
    return Batch.concat(batches)


class FixedSamples(Dataset):
    def __init__(self, samples: list[Batch]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Batch:
        return self.samples[index]


class FixedOrderData(pl.LightningDataModule):
    """The first ``num_samples`` samples of the dataset's one-rank order, served in that order."""

    def __init__(self, manifest: Path, batch_size: int, num_samples: int, num_frames: int):
        super().__init__()
        self.manifest, self.batch_size = manifest, batch_size
        self.num_samples, self.num_frames = num_samples, num_frames

    def setup(self, stage: str) -> None:
        source = VideoDataModule(
            train=[DatasetSource(str(self.manifest))],
            batch_size=1,
            num_workers=0,
            num_frames=self.num_frames,
            shuffle_buffer=1,
            epi={"apply_prob": 0.0},
            pin_memory=False,
        )
        self.samples = []
        for batch in source.train_dataloader():
            self.samples.append(batch)
            if len(self.samples) == self.num_samples:
                break

    def train_dataloader(self) -> DataLoader:
        # Rank r of N takes samples r, r + N, ... (Lightning's own DistributedSampler would shuffle them).
        sampler = DistributedSampler(
            FixedSamples(self.samples),
            num_replicas=self.trainer.world_size,
            rank=self.trainer.global_rank,
            shuffle=False,
        )
        return DataLoader(
            FixedSamples(self.samples), batch_size=self.batch_size, sampler=sampler, collate_fn=concat_batches
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--data", "--out"):
        parser.add_argument(name, type=Path, required=True)
    for name in ("--devices", "--batch-size", "--steps"):
        parser.add_argument(name, type=int, required=True)
    args = parser.parse_args()
    manifest = args.data / "manifest.json"
    cli = AnimateXCLI(
        args=[
            "--config",
            str(TINY),
            "--data.train",
            f"[{{manifest: {manifest}}}]",
            "--data.val",
            "null",
            "--data.anchor_pool",
            "null",
            "--model.empty_prompt_cache",
            "null",
            "--model.ema.enabled",
            "false",
            *NO_BATCH_COUPLED_RANDOMNESS,
        ],
        run=False,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        max_steps=args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=cli.trainer.gradient_clip_val,
        limit_val_batches=0,
        default_root_dir=str(args.out),
        callbacks=[RunProbe(str(args.out / "probe"))],
        use_distributed_sampler=False,
    )
    data = FixedOrderData(
        manifest, args.batch_size, args.batch_size * args.devices * args.steps, cli.datamodule.window.num_frames
    )
    trainer.fit(cli.model, datamodule=data)


if __name__ == "__main__":
    sys.exit(main())
