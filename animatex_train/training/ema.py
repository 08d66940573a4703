"""Exponential moving average of the trainable weights, as a callback (applied from outside the model).

The shadow weights are kept in float32 on every rank (replicated like the weights themselves under
DDP and ZeRO-1/2), updated after each optimizer step, saved in and restored from checkpoints, and
swapped in for validation sampling and for export. Under ZeRO-3 each update gathers the partitioned
parameters (``deepspeed.zero.GatheredParameters``), so raise ``update_every_n_steps`` there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from torch import nn


@dataclass
class EMAConfig:
    """Attributes:
    enabled: keep an EMA.
    decay: per-update decay (VGen: 0.9999).
    update_every_n_steps: update after every n-th optimizer step (decay is applied once per update).
    start_step: optimizer step at which the EMA starts from the current weights.
    on_cpu: keep the shadow weights in host memory (slower updates, no accelerator memory).
    """

    enabled: bool = True
    decay: float = 0.9999
    update_every_n_steps: int = 1
    start_step: int = 0
    on_cpu: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"model.ema.decay must be in [0, 1), got {self.decay}")
        if self.update_every_n_steps < 1:
            raise ValueError(f"model.ema.update_every_n_steps must be >= 1, got {self.update_every_n_steps}")


def _gathered(params: list[nn.Parameter]):
    if any(hasattr(p, "ds_id") for p in params):  # DeepSpeed ZeRO-3 partitioned parameters
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    return contextlib.nullcontext()


class EMA(pl.Callback):
    """EMA of ``pl_module.denoiser``'s trainable parameters (names are the denoiser's own)."""

    def __init__(self, config: EMAConfig):
        self.config = config
        self.shadow: dict[str, torch.Tensor] = {}
        self.num_updates = 0

    def _params(self, pl_module: pl.LightningModule) -> dict[str, nn.Parameter]:
        return {n: p for n, p in pl_module.denoiser.named_parameters() if p.requires_grad}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.config.enabled:
            return
        if not self.shadow:
            self._reset(pl_module)
        elif not self.config.on_cpu:  # restored from a checkpoint (on the CPU): move next to the weights
            params = self._params(pl_module)
            missing = set(params) - set(self.shadow)
            if missing:
                raise RuntimeError(
                    f"the checkpoint's EMA lacks {len(missing)} parameter(s), e.g. {sorted(missing)[:3]}"
                )
            self.shadow = {n: self.shadow[n].to(params[n].device) for n in params}

    def _reset(self, pl_module: pl.LightningModule) -> None:
        params = self._params(pl_module)
        device = "cpu" if self.config.on_cpu else None
        with _gathered(list(params.values())), torch.no_grad():
            self.shadow = {n: p.detach().float().to(device or p.device, copy=True) for n, p in params.items()}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int):
        if not self.config.enabled or trainer.global_step == getattr(self, "_last_step", -1):
            return  # no optimizer step happened (gradient accumulation)
        self._last_step = trainer.global_step
        step = trainer.global_step
        if step <= self.config.start_step:
            self._reset(pl_module)
            return
        if step % self.config.update_every_n_steps:
            return
        params = self._params(pl_module)
        with _gathered(list(params.values())), torch.no_grad():
            for name, param in params.items():
                shadow = self.shadow[name]
                shadow.lerp_(param.detach().to(shadow.device, torch.float32), 1.0 - self.config.decay)
        self.num_updates += 1

    @contextlib.contextmanager
    def swapped_in(self, pl_module: pl.LightningModule) -> Iterator[None]:
        """Temporarily load the EMA weights into the denoiser (validation sampling)."""
        if not self.config.enabled or not self.shadow:
            yield
            return
        params = self._params(pl_module)
        with _gathered(list(params.values())), torch.no_grad():
            backup = {n: p.detach().clone() for n, p in params.items()}
            for name, param in params.items():
                param.copy_(self.shadow[name].to(param.device, param.dtype))
        try:
            yield
        finally:
            with _gathered(list(params.values())), torch.no_grad():
                for name, param in params.items():
                    param.copy_(backup[name])

    def state_dict(self) -> dict:
        return {"shadow": {k: v.cpu() for k, v in self.shadow.items()}, "num_updates": self.num_updates,
                "last_step": getattr(self, "_last_step", -1)}  # fmt: skip

    def load_state_dict(self, state_dict: dict) -> None:
        self.shadow = dict(state_dict["shadow"])
        self.num_updates = int(state_dict["num_updates"])
        self._last_step = int(state_dict.get("last_step", -1))
