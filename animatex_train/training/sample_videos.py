"""Validation sample clips (DDIM + CFG with the EMA weights), rendered by a callback that every rank enters.

Sampling runs the denoiser, and under ZeRO-3 and FSDP's sharded modes that is a sequence of collectives
(parameters are gathered block by block), as is swapping the EMA in under ZeRO-3. So every rank samples the
first clips of its own first validation batch, the same number of denoiser calls on each, and rank 0 alone
writes the mp4/PNG files and logs the video. The generation goes through the strategy's wrapper the way
Lightning runs ``validation_step`` (its forward redirection): FSDP gathers the root unit's parameters only
inside the wrapper's forward. Under DDP the other ranks' clips are discarded (rank 0 would otherwise be the only
rank working while the others wait for it at the next collective).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

from animatex_train.training.ema import EMA

log = logging.getLogger(__name__)


@dataclass
class ValidationConfig:
    """What validation does besides the validation loss.

    Attributes:
        sample_clips: render sample clips (DDIM + CFG, EMA weights) from the first validation batch; every rank
            samples, rank 0 writes them and logs them to the loggers that take videos (W&B).
        num_samples: how many clips of that batch to render.
        output_dir: where clips go; defaults to ``<trainer.default_root_dir>/samples``.
        fps: frame rate of the written mp4s.
    """

    sample_clips: bool = True
    num_samples: int = 1
    output_dir: str | None = None
    fps: float = 8.0

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(
                f"model.validation.num_samples must be >= 1, got {self.num_samples}; "
                "to render no clip set model.validation.sample_clips: false"
            )
        if self.fps <= 0:
            raise ValueError(f"model.validation.fps must be > 0, got {self.fps}")


class SampleVideoLogger(pl.Callback):
    """Renders ``ref | pose | generated | ground truth`` clips of the first validation batch at each validation.

    Needs a module with ``render_validation_clips(batch, num_samples) -> (generated, truth)`` (uint8
    ``(n, f, H, W, 3)`` each) and a ``Batch`` with ``keys``, ``ref_image`` and ``pose_images``.
    """

    def __init__(self, config: ValidationConfig):
        self.config = config

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs,
        batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self.config.sample_clips or batch_idx != 0 or dataloader_idx != 0:
            return
        n = min(self.config.num_samples, batch.batch_size)
        generated, truth = render_with_ema(trainer, pl_module, batch, n)
        if trainer.global_rank == 0:
            self._write(trainer, pl_module, batch, generated.numpy(), truth.numpy())

    def _write(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, generated: np.ndarray, truth: np.ndarray
    ) -> None:
        from animatex_train.data.format.video import side_by_side, write_mp4, write_strip

        out_dir = Path(self.config.output_dir or Path(trainer.default_root_dir) / "samples")
        n = generated.shape[0]
        poses = batch.head(n).pose_images[:, :, 1:].permute(0, 2, 3, 4, 1).cpu().numpy()  # (n, f, H, W, 3)
        for i in range(n):
            ref = np.repeat(batch.ref_image[i].permute(1, 2, 0).cpu().numpy()[None], poses[i].shape[0], axis=0)
            stem = out_dir / f"step{trainer.global_step:07d}-{batch.keys[i]}"
            clip = side_by_side(ref, poses[i], generated[i], truth[i])
            write_mp4(stem.with_suffix(".mp4"), clip, fps=self.config.fps)
            write_strip(stem.with_suffix(".png"), [ref, poses[i], generated[i], truth[i]])
            for logger in trainer.loggers:
                if hasattr(logger, "log_video"):
                    logger.log_video(
                        "val/sample",
                        [str(stem.with_suffix(".mp4"))],
                        step=trainer.global_step,
                        caption=[f"{batch.keys[i]}: ref | pose | generated | ground truth"],
                    )
        log.info("validation samples written to %s", out_dir)


def render_with_ema(trainer: pl.Trainer, pl_module: pl.LightningModule, batch, n: int):
    """``render_through_strategy`` with the EMA weights swapped in (when the run has an EMA), without gradients."""
    ema = next((c for c in trainer.callbacks if isinstance(c, EMA)), None)
    with ema.swapped_in(pl_module) if ema is not None else contextlib.nullcontext(), torch.no_grad():
        return render_through_strategy(trainer, pl_module, batch, n)


def render_through_strategy(trainer: pl.Trainer, pl_module: pl.LightningModule, batch, n: int):
    """``pl_module.render_validation_clips(batch, n)`` run inside the strategy's wrapper (DDP, DeepSpeed engine,
    FSDP root unit) when there is one, as Lightning runs ``validation_step``."""
    strategy = trainer.strategy
    wrapper = getattr(strategy, "model", None)
    if wrapper is None or wrapper is pl_module:
        return pl_module.render_validation_clips(batch, n)
    # Lightning's private forward redirection (pinned lightning): the supported path for a method that must run
    # inside the wrapper's forward; strategy.validation_step uses it the same way.
    return strategy._forward_redirection(wrapper, pl_module, "render_validation_clips", batch, n)
