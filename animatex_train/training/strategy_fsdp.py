"""``AnimateXFSDPStrategy``: Lightning's FSDP (FSDP1) wrapping each denoiser block as one unit.

Chosen by a cluster overlay: ``trainer.strategy.class_path:
animatex_train.training.strategy_fsdp.AnimateXFSDPStrategy``.
Gradient-norm clipping goes through FSDP (Lightning's FSDP plugin refuses it) and the batch reaches the step as the
loader made it. On CPU it passes ``device_id=cpu`` and gathers full state dicts without "offloading" to the CPU
(both measured to fail otherwise). The EMA callback is refused under sharding (it would average flattened shards).
"""

from __future__ import annotations

import functools
import logging
from typing import Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.precision import FSDPPrecision
from lightning.pytorch.strategies import FSDPStrategy

from animatex_train.training.activation_checkpointing import outermost_blocks
from animatex_train.training.strategy import (
    DEFAULT_TIMEOUT_S,
    BatchAsLoaded,
    checkpoint_denoiser_activations,
    denoiser_of,
    timeout_delta,
)

log = logging.getLogger(__name__)
_Sharding = Literal["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD"]


class AnimateXFSDPStrategy(FSDPStrategy):
    """Lightning's FSDP (FSDP1) with one FSDP unit per denoiser block, usable on CPU (gloo) too.

    Args:
        sharding_strategy: ``FULL_SHARD`` (ZeRO-3-like), ``SHARD_GRAD_OP`` (ZeRO-2-like), ``NO_SHARD`` (DDP-like)
            or ``HYBRID_SHARD`` (full shard within a node, replicate across nodes).
        wrap_blocks: make each outermost checkpointable denoiser block its own FSDP unit (parameters are gathered
            block by block); false: the whole module is one unit (the full model is gathered at once).
        activation_checkpointing: recompute the denoiser blocks' activations in backward.
        cpu_offload: keep sharded parameters (and their gradients) in host memory.
        state_dict_type: ``full`` (one file, written by rank 0) or ``sharded`` (a directory of shards).
        process_group_backend: None picks by device (CUDA: nccl, CPU: gloo).
        timeout_s: collective timeout in seconds.
    """

    def __init__(
        self,
        sharding_strategy: _Sharding = "FULL_SHARD",
        wrap_blocks: bool = True,
        activation_checkpointing: bool = False,
        cpu_offload: bool = False,
        state_dict_type: Literal["full", "sharded"] = "full",
        process_group_backend: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ):
        super().__init__(
            sharding_strategy=sharding_strategy,
            cpu_offload=cpu_offload,
            state_dict_type=state_dict_type,
            process_group_backend=process_group_backend,
            timeout=timeout_delta(timeout_s, "AnimateXFSDPStrategy"),
        )
        self.wrap_blocks = wrap_blocks
        self.activation_checkpointing = activation_checkpointing

    def setup(self, trainer: pl.Trainer) -> None:
        _refuse_sharded_ema(trainer, self.sharding_strategy.name)
        plugin = self.precision_plugin
        if type(plugin) is FSDPPrecision:  # trainer.gradient_clip_val works under FSDP too (see the class below)
            self.precision_plugin = _FSDPNormClipping(plugin.precision, plugin.scaler, self)
        if self.activation_checkpointing:
            checkpoint_denoiser_activations(self.lightning_module)
        if self.wrap_blocks:
            from torch.distributed.fsdp.wrap import CustomPolicy

            unit_ids = frozenset(id(b) for b in outermost_blocks(denoiser_of(self.lightning_module)))
            self.kwargs["auto_wrap_policy"] = CustomPolicy(functools.partial(_is_unit, unit_ids))
        super().setup(trainer)

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.root_device.type != "cpu":
            return super()._setup_model(model)
        from torch.distributed.fsdp import FullyShardedDataParallel

        # Lightning passes device_id=root_device.index (None on CPU), which FSDP refuses without an accelerator.
        wrapped = FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=torch.device("cpu"),
            **self.kwargs,
        )
        self.kwargs.pop("auto_wrap_policy", None)  # already applied; Lightning would warn that it is ignored
        return super()._setup_model(wrapped)

    def lightning_module_state_dict(self) -> dict:
        if self.root_device.type != "cpu" or self._state_dict_type != "full":
            return super().lightning_module_state_dict()
        with self._cpu_full_state_dict_context():
            return self.model.state_dict()

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        if self.root_device.type != "cpu" or self._state_dict_type != "full":
            return super().optimizer_state(optimizer)
        from torch.distributed.fsdp import FullyShardedDataParallel, OptimStateKeyType

        optimizer = getattr(optimizer, "_optimizer", optimizer)  # a LightningOptimizer wraps the real one
        with self._cpu_full_state_dict_context():
            state = FullyShardedDataParallel.optim_state_dict(self.model, optimizer)
            if self.global_rank == 0:
                state = FullyShardedDataParallel.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_ID, self.model)
            return state

    def _cpu_full_state_dict_context(self):
        """Lightning gathers full state dicts with ``offload_to_cpu=True``; with parameters already on the CPU,
        FSDP's "offloaded" copy aliases the unsharded buffer it then frees, and cloning it segfaults (measured,
        torch 2.13). On CPU nothing needs offloading."""
        from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        return FSDP.state_dict_type(
            self.model,
            StateDictType.FULL_STATE_DICT,
            FullStateDictConfig(offload_to_cpu=False, rank0_only=True),
            FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=True),
        )


def _refuse_sharded_ema(trainer: pl.Trainer, sharding: str) -> None:
    from animatex_train.training.ema import EMA

    if sharding == "NO_SHARD" or not any(isinstance(c, EMA) and c.config.enabled for c in trainer.callbacks):
        return
    # Under FSDP each rank's parameters are flattened views of its shard: the EMA callback would average and save
    # rank 0's shard with flattened shapes (measured), a checkpoint nothing can use. Fail before training instead.
    raise ValueError(
        f"model.ema is not supported with AnimateXFSDPStrategy(sharding_strategy={sharding}): the EMA callback keeps a "
        "copy of each rank's flattened parameter shard, not of the weights. Use AnimateXDeepSpeedStrategy (ZeRO-2/3 "
        "keep a full EMA), sharding_strategy: NO_SHARD, or model.ema.enabled: false"
    )


class _FSDPNormClipping(BatchAsLoaded, FSDPPrecision):
    """Lightning's FSDP precision plugin refuses ``gradient_clip_algorithm='norm'``: the norm of sharded gradients
    needs a collective, which FSDP's own ``clip_grad_norm_`` performs. Clip through it (``AnimateXSystem`` clips in
    its own hook, ``training/grad_norm.py``; this serves other modules). The ``Batch`` is left as loaded."""

    def __init__(self, precision, scaler, strategy: AnimateXFSDPStrategy):
        super().__init__(precision, scaler)
        self._strategy = strategy

    def clip_grad_by_norm(self, optimizer: torch.optim.Optimizer, clip_val: float) -> None:
        self._strategy.model.clip_grad_norm_(clip_val)


def _is_unit(unit_ids: frozenset[int], module: torch.nn.Module) -> bool:
    return id(module) in unit_ids
