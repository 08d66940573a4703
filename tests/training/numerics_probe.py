"""A callback the strategy and numerics tests add to ``fit`` runs (``--trainer.callbacks+=numerics_probe...``).

Per rank it records, after every optimizer step, the system's global gradient norm and whether the step was
skipped, and the dtypes of the batch as the step receives it; it can make one rank's gradients non-finite (a
backward that turns the denoiser's output gradient into NaN, with a finite loss) and writes the exception a rank
stops with. Output: ``numerics-rank<r>.json`` in ``<trainer.default_root_dir>/probe`` (or ``out_dir``), read by
``support/numerics_runs.py``. Not a test module: imported by the ``fit`` subprocesses with ``tests/training`` on
``PYTHONPATH``.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import lightning.pytorch as pl
import torch


class _NaNGradient(torch.autograd.Function):
    """Identity forward; backward returns NaN gradients (every parameter upstream gets them, the loss stays finite)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad * float("nan")


class NumericsProbe(pl.Callback):
    """Args:
    out_dir: where ``numerics-rank<r>.json`` goes; None: ``<trainer.default_root_dir>/probe``.
    nan_grad_at_step: make ``nan_grad_rank``'s gradients NaN at this global step (-1: never).
    nan_grad_rank: see ``nan_grad_at_step``.
    """

    def __init__(self, out_dir: str | None = None, nan_grad_at_step: int = -1, nan_grad_rank: int = 0):
        self.out_dir = out_dir
        self.nan_grad_at_step, self.nan_grad_rank = nan_grad_at_step, nan_grad_rank
        self.steps: list[dict] = []
        self.batch_dtypes: dict[str, str] = {}
        self.exception: str | None = None
        self._hook = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if not self.batch_dtypes:
            self.batch_dtypes = {
                f.name: str(getattr(batch, f.name).dtype)
                for f in fields(batch)
                if isinstance(getattr(batch, f.name), torch.Tensor)
            }
        if trainer.global_step == self.nan_grad_at_step and trainer.global_rank == self.nan_grad_rank:
            self._hook = pl_module.denoiser.register_forward_hook(lambda module, args, out: _NaNGradient.apply(out))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        self._remove_hook()
        norm = pl_module.grad_norm
        self.steps.append(
            {
                "step": trainer.global_step,
                "skipped": pl_module.step_skipped,
                "grad_norm": None if norm is None else float(norm),
            }
        )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._remove_hook()
        self.exception = f"{type(exception).__name__}: {exception}"
        self._write(trainer)

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _write(self, trainer: pl.Trainer) -> None:
        out_dir = Path(self.out_dir or Path(trainer.default_root_dir) / "probe")
        out_dir.mkdir(parents=True, exist_ok=True)
        record = {"steps": self.steps, "batch_dtypes": self.batch_dtypes, "exception": self.exception}
        (out_dir / f"numerics-rank{trainer.global_rank}.json").write_text(json.dumps(record))
