"""A callback the test runs load (``--trainer.callbacks+=probe.StepProbe``): progress and checkpoint saves.

Writes JSON lines to ``<default_root_dir>/probe/rank<r>.jsonl``:

* ``{"event": "start", "step": N}`` when training starts (N > 0 after a resume);
* ``{"event": "step", "step": N}`` after every optimizer step;
* ``{"event": "save", "step": N, "in_signal_handler": ..., "in_backward": ..., "stack": [...]}`` for every
  ``CrashSafeCheckpoint.save``, so a test can prove a save never runs inside a signal handler or a backward.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl

from animatex_train.training.checkpoint import CrashSafeCheckpoint
from animatex_train.training.preemption import PreemptionHandler


class StepProbe(pl.Callback):
    def __init__(self) -> None:
        self._in_backward = False
        self._path: Path | None = None

    def _write(self, **record) -> None:
        with self._path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._path = Path(trainer.default_root_dir) / "probe" / f"rank{trainer.global_rank}.jsonl"
        self._path.parent.mkdir(parents=True, exist_ok=True)
        checkpoint = next(c for c in trainer.callbacks if isinstance(c, CrashSafeCheckpoint))
        original = checkpoint.save

        def recorded_save(trainer_: pl.Trainer):
            frames, frame = [], sys._getframe(1)
            while frame is not None:
                frames.append(frame.f_code)
                frame = frame.f_back
            self._write(
                event="save",
                step=trainer_.global_step,
                in_backward=self._in_backward,
                in_signal_handler=PreemptionHandler._on_signal.__code__ in frames,
                stack=[code.co_name for code in frames[:6]],
            )
            return original(trainer_)

        checkpoint.save = recorded_save

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(event="start", step=trainer.global_step)

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss) -> None:
        self._in_backward = True

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._in_backward = False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx):
        self._write(event="step", step=trainer.global_step)
