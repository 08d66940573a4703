"""Exponential moving average of the trainable weights, as a callback (applied from outside the model).

Only rank 0 holds the shadow weights (float32): it alone saves them (checkpoints are written by rank 0) and
renders validation samples with them, so a copy on every rank would cost ``world_size`` times the memory for
nothing (paper model: 7.3 GB each). The update is vectorised (``torch._foreach_lerp_``) and runs over chunks of
parameters: with ``on_cpu`` each chunk reaches the host as one flat copy instead of one copy per tensor.

Under DDP and ZeRO-1/2 every rank holds the full weights, so rank 0 updates alone and the other ranks do
nothing. Under ZeRO-3 the weights are partitioned: every rank gathers each chunk with rank 0
(``deepspeed.zero.GatheredParameters``, a collective) and rank 0 averages it; raise ``update_every_n_steps``
there. Validation sampling swaps the EMA in on every rank (``swapped_in``): under ZeRO-3 rank 0 writes the
gathered chunks and DeepSpeed re-partitions them (``modifier_rank=0``); each rank keeps a copy of its own
partition to restore afterwards. FSDP's sharded modes are refused (``training/strategy_fsdp.py``).

A step the numerics guard skipped (``pl_module.step_skipped``) changed no weight and is not an EMA update.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from torch import nn

CHUNK_BYTES = 256 * 2**20  # float32 bytes gathered (ZeRO-3) or copied to the host (on_cpu) at a time


@dataclass
class EMAConfig:
    """Attributes:
    enabled: keep an EMA.
    decay: per-update decay (VGen: 0.9999).
    update_every_n_steps: update after every n-th optimizer step (decay is applied once per update).
    start_step: optimizer step at which the EMA starts from the current weights.
    on_cpu: keep the shadow weights in host memory (rank 0's only: no accelerator memory, one host copy per
        256 MiB chunk per update).
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


def _partitioned(params: list[nn.Parameter]) -> bool:
    return any(hasattr(p, "ds_id") for p in params)  # DeepSpeed ZeRO-3 partitioned parameters


def _gathered(params: list[nn.Parameter], modifier_rank: int | None = None):
    """The full tensors of ``params`` inside the context (a collective under ZeRO-3: every rank must enter)."""
    if _partitioned(params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)
    return contextlib.nullcontext()


def _numel(param: nn.Parameter) -> int:
    return int(getattr(param, "ds_numel", param.numel()))


def _chunks(params: dict[str, nn.Parameter]) -> Iterator[list[tuple[str, nn.Parameter]]]:
    """``params`` in order, grouped into chunks of about ``CHUNK_BYTES`` of float32 (the same chunks on every rank)."""
    chunk, size = [], 0
    for item in params.items():
        chunk.append(item)
        size += 4 * _numel(item[1])
        if size >= CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


class EMA(pl.Callback):
    """EMA of ``pl_module.denoiser``'s trainable parameters (names are the denoiser's own), held by rank 0."""

    def __init__(self, config: EMAConfig):
        self.config = config
        self.shadow: dict[str, torch.Tensor] = {}
        self.num_updates = 0
        self.is_holder = True  # rank 0 (set in setup); a single process holds it

    def _params(self, pl_module: pl.LightningModule) -> dict[str, nn.Parameter]:
        return {n: p for n, p in pl_module.denoiser.named_parameters() if p.requires_grad}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.is_holder = trainer.global_rank == 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.config.enabled:
            return
        if not self.shadow:
            self._reset(pl_module)
            return
        params = self._params(pl_module)  # restored from a checkpoint (on the CPU)
        missing = set(params) - set(self.shadow)
        if missing:
            raise RuntimeError(f"the checkpoint's EMA lacks {len(missing)} parameter(s), e.g. {sorted(missing)[:3]}")
        if not self.config.on_cpu:  # next to the weights
            self.shadow = {n: self.shadow[n].to(params[n].device) for n in params}

    def _reset(self, pl_module: pl.LightningModule) -> None:
        """Start the EMA from the current weights."""
        params = self._params(pl_module)
        if not self.is_holder and not _partitioned(list(params.values())):
            return
        shadow = {}
        for chunk in _chunks(params):
            with _gathered([p for _, p in chunk]), torch.no_grad():
                if self.is_holder:
                    device = "cpu" if self.config.on_cpu else None
                    shadow.update({n: p.detach().to(device or p.device, torch.float32, copy=True) for n, p in chunk})
        self.shadow = shadow

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int):
        if not self.config.enabled or trainer.global_step == getattr(self, "_last_step", -1):
            return  # no optimizer step happened (gradient accumulation)
        self._last_step = trainer.global_step
        if getattr(pl_module, "step_skipped", False):
            return  # the numerics guard skipped this step: the weights did not change
        step = trainer.global_step
        if step <= self.config.start_step:
            self._reset(pl_module)
            return
        if step % self.config.update_every_n_steps:
            return
        self.update(pl_module)
        self.num_updates += 1

    def update(self, pl_module: pl.LightningModule) -> None:
        """shadow <- decay * shadow + (1 - decay) * weights, chunk by chunk."""
        params = self._params(pl_module)
        if not self.is_holder and not _partitioned(list(params.values())):
            return
        weight = 1.0 - self.config.decay
        for chunk in _chunks(params):
            with _gathered([p for _, p in chunk]), torch.no_grad():
                if not self.is_holder:
                    continue  # ZeRO-3: this rank only took part in the gather
                shadows = [self.shadow[n] for n, _ in chunk]
                weights = [p.detach() for _, p in chunk]
                if self.config.on_cpu and weights[0].device.type != "cpu":
                    # One flat device-to-host copy per chunk (one per tensor would be ~2,100 per step).
                    flat = torch.cat([w.reshape(-1).float() for w in weights]).cpu()
                    weights = [
                        v.view_as(s) for v, s in zip(flat.split([s.numel() for s in shadows]), shadows, strict=True)
                    ]
                elif weights[0].device.type == "cpu" and weights[0].dtype != torch.float32:
                    # Host weights in bf16: converting a whole chunk at once allocates (and page-faults) 256 MiB
                    # per chunk, 1.7x slower than converting tensor by tensor (benchmarks/ema_update.py).
                    for target, value in zip(shadows, weights, strict=True):
                        target.lerp_(value.float(), weight)
                    continue
                else:
                    weights = [w if w.dtype == torch.float32 else w.float() for w in weights]
                torch._foreach_lerp_(shadows, weights, weight)

    @contextlib.contextmanager
    def swapped_in(self, pl_module: pl.LightningModule) -> Iterator[None]:
        """Load the EMA weights into the denoiser inside the context (validation sampling); every rank enters.

        The raw weights are restored bitwise afterwards, on errors too. Under DDP and ZeRO-1/2 only rank 0 swaps
        (the other ranks sample with their raw weights; their clips are not written). Under ZeRO-3 rank 0's EMA
        reaches every rank's partition."""
        params = self._params(pl_module)
        partitioned = _partitioned(list(params.values()))
        if not self.config.enabled or not (self.shadow or partitioned) or not (self.is_holder or partitioned):
            yield
            return
        if partitioned:  # each rank's own partition is what it restores: no collective on the way back
            backup = {n: p.ds_tensor.detach().clone() for n, p in params.items()}
        else:
            backup = {n: p.detach().clone() for n, p in params.items()}
        try:
            for chunk in _chunks(params):
                with _gathered([p for _, p in chunk], modifier_rank=0), torch.no_grad():
                    if self.is_holder and self.shadow:  # no shadow (validate without a checkpoint): raw weights
                        for name, param in chunk:
                            param.copy_(self.shadow[name].to(param.device, param.dtype))
            yield
        finally:
            with torch.no_grad():
                for name, param in params.items():
                    (param.ds_tensor if partitioned else param).copy_(backup[name])

    def state_dict(self) -> dict:
        return {
            "shadow": {k: v.cpu() for k, v in self.shadow.items()},
            "num_updates": self.num_updates,
            "last_step": getattr(self, "_last_step", -1),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        # Every rank reads the checkpoint; only the holder keeps the weights (setup ran before the restore).
        self.shadow = dict(state_dict["shadow"]) if self.is_holder else {}
        self.num_updates = int(state_dict["num_updates"])
        self._last_step = int(state_dict.get("last_step", -1))
