"""An opt-in evaluation during training: at validation, the first clips of the first validation batches are
generated with the EMA weights (DDIM + CFG, the validation sampler) and scored against their ground truth with the
paired metrics and FID, computed exactly as ``animatex-train evaluate`` computes them (DisCo's definitions).

It is a Lightning callback, added in a recipe or overlay::

    trainer:
      callbacks:
        - class_path: animatex_train.eval.callback.TrainingEvaluation
          init_args:
            num_batches: 4                # validation batches scored (the first ones: the same clips each time)
            every_n_validations: 2        # score every 2nd validation (val_check_interval sets how often that is)
            metrics: [psnr_star, ssim, l1, lpips, fid]
            weights: {vgg16: /weights/vgg16-397923af.pth, fid_inception: /weights/pt_inception-2015-12-05-6726825d.pth}

The numbers are logged as ``eval/<metric>`` (W&B and the other loggers). They track progress on a small, fixed
subset of the validation data and at the validation resolution; they are not the paper's protocol (for that,
``animatex-train evaluate`` on a test set). FID on a few dozen frames is strongly biased upwards; compare it only
between steps of one run. FID-VID and FVD need 16-frame windows of many clips: use ``evaluate``.

Every rank generates and scores its own share (generation is a sequence of collectives under ZeRO-3 and FSDP, so
every rank must render; rank batches are equal by construction of the loader), and the scores and feature
statistics are gathered before the Fréchet distance, so the numbers are those of all ranks' clips together.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

import lightning.pytorch as pl
import torch

from animatex_train.eval.metrics.suite import PAIRED, MetricsConfig, MetricSuite, WeightPaths
from animatex_train.training.sample_videos import render_with_ema

log = logging.getLogger(__name__)

TRAINING_METRICS = (*PAIRED, "fid")  # FID-VID/FVD need 16-frame windows of many clips: `evaluate` only
KEY = "trainer.callbacks[TrainingEvaluation].init_args"


class TrainingEvaluation(pl.Callback):
    """Paired metrics and FID on the first validation batches, every ``every_n_validations`` validations.

    Args:
        num_batches: how many validation batches (from the first) are generated and scored; each costs one DDIM
            sampling of ``samples_per_batch`` clips on every rank.
        samples_per_batch: clips generated per batch (None: the whole batch).
        every_n_validations: score at every n-th validation (1: each); the sanity check before training is never
            scored.
        metrics: names from ``psnr_star, ssim, l1, lpips, psnr_legacy_uint8, fid``.
        weights: weight files by network (``vgg16`` for LPIPS, ``fid_inception`` for FID); a missing entry looks
            in the torch hub cache, as ``evaluate`` does.
        lpips_input_range: ``unit`` (DisCo, the published numbers) or ``signed``.
        frechet_method: ``eigh`` (default here: fast and stable on few samples) or ``sqrtm`` (pytorch-fid's).
    """

    def __init__(
        self,
        num_batches: int = 1,
        samples_per_batch: int | None = None,
        every_n_validations: int = 1,
        metrics: list[str] | None = None,
        weights: dict[str, str] | None = None,
        lpips_input_range: str = "unit",
        frechet_method: str = "eigh",
    ) -> None:
        chosen = list(metrics) if metrics is not None else ["psnr_star", "ssim", "l1", "lpips", "fid"]
        unsupported = [m for m in chosen if m not in TRAINING_METRICS]
        if unsupported:
            raise ValueError(
                f"{KEY}.metrics: {unsupported} cannot be computed during training; expected names from "
                f"{list(TRAINING_METRICS)} (FID-VID and FVD: run `animatex-train evaluate`)"
            )
        for key, value in (
            ("num_batches", num_batches),
            ("every_n_validations", every_n_validations),
            ("samples_per_batch", samples_per_batch or 1),
        ):
            if value < 1:
                raise ValueError(f"{KEY}.{key} must be >= 1, got {value}")
        known = set(asdict(WeightPaths()))
        unknown = sorted(set(weights or {}) - known)
        if unknown:
            raise ValueError(f"{KEY}.weights: unknown {unknown}; expected keys from {sorted(known)}")
        self.num_batches, self.samples_per_batch = num_batches, samples_per_batch
        self.every_n_validations = every_n_validations
        self.metrics_config = MetricsConfig(
            metrics=chosen, lpips_input_range=lpips_input_range, frechet_method=frechet_method
        )
        self.weights = WeightPaths(**(weights or {}))
        self.suite: MetricSuite | None = None
        self._validations = 0
        self._active = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Load the metric networks once, before training starts, so a missing weight file fails at once."""
        if self.suite is not None:
            return
        self.metrics_config.device = str(pl_module.device) if pl_module.device.type != "meta" else "cpu"
        try:
            self.suite = MetricSuite(self.metrics_config, self.weights)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{KEY}.weights: {error}".replace("--weights.", f"{KEY}.weights.")) from error

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._active = False
        if trainer.sanity_checking:
            return
        self._validations += 1
        self._active = (self._validations - 1) % self.every_n_validations == 0
        if self._active:
            self.suite.networks_to(pl_module.device)
            self.suite.reset()

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs,
        batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._active or dataloader_idx != 0 or batch_idx >= self.num_batches:
            return
        n = min(self.samples_per_batch or batch.batch_size, batch.batch_size)
        generated, truth = render_with_ema(trainer, pl_module, batch, n)  # (n, f, H, W, 3) uint8
        valid = batch.valid[:n].tolist()
        for i in range(n):
            if valid[i]:  # a placeholder row (an unreadable sample) is rendered for the collectives, never scored
                self.suite.add_video_pair(batch.keys[i], list(generated[i].numpy()), list(truth[i].numpy()))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active:
            return
        self._active = False
        result = self.suite.compute()  # every rank: the scores and statistics are gathered
        values = {f"eval/{name}": value for name, value in result["metrics"].items() if value is not None}
        skipped = sorted(name for name, value in result["metrics"].items() if value is None)
        if skipped:
            log.warning(
                "training evaluation: %s not computed (%s); score more clips (num_batches)", skipped, result["counts"]
            )
        if values:
            # Identical on every rank (gathered above): no further reduction.
            pl_module.log_dict(values, on_epoch=True, sync_dist=False, rank_zero_only=True)
        self.suite.networks_to(torch.device("cpu"))  # free the accelerator for training
