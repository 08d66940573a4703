"""Distributed strategies, chosen by a cluster overlay (``trainer.strategy: {class_path, init_args}``).

Parallelism is applied from outside the model, which stays a plain ``nn.Module``. Three Lightning strategies, each with
typed, documented arguments and one extra switch, ``activation_checkpointing``, which recomputes the
denoiser's blocks (``training/activation_checkpointing.py``) before the strategy wraps the module:

* ``AnimateXDDPStrategy``: Lightning's DDP with a timeout in seconds (plain ``strategy: ddp`` works too).
* ``AnimateXDeepSpeedStrategy``: Lightning's DeepSpeed strategy for ZeRO stages 1-3, optional CPU offload
  of the optimizer state (and, with stage 3, of the parameters), bf16 through ``trainer.precision``.
  On CUDA it is Lightning's strategy plus four additions: the recipe's AdamW becomes DeepSpeed's CPU Adam
  under offload; in bf16/fp16 (DeepSpeed converts the module itself, without autocast) the denoiser's
  floating-point inputs are cast to its weights' dtype by a forward pre-hook; the batch reaches the step as the
  loader made it (Lightning's DeepSpeed precision would convert all of it, unlike DDP's); under
  ZeRO-3 each denoiser block is one fetch unit. On CPU (CI, gloo), where Lightning refuses DeepSpeed, three
  overrides apply (docs/dependencies.md §2, measured with lightning 2.6.6 / deepspeed 0.19.8): skip the
  CUDA-only check, skip the device-index check (CPU devices have no index) and hand DeepSpeed device rank 0
  instead of None. They touch Lightning internals, hence the pinned lightning version.
* ``AnimateXFSDPStrategy`` (``training/strategy_fsdp.py``): Lightning's FSDP (FSDP1) wrapping each denoiser
  block as one unit.

The frozen VAE and CLIP are held outside the module registry (``system.py``), so no strategy sees them:
they are never in the optimizer, the DDP buckets, the ZeRO partitions or the checkpoints.
"""

from __future__ import annotations

import logging
import warnings
from datetime import timedelta
from typing import Literal

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.plugins.precision import DeepSpeedPrecision
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from lightning_utilities.core.apply_func import apply_to_collection

from animatex_train.data.loading.batch import Batch
from animatex_train.training.activation_checkpointing import apply_activation_checkpointing, outermost_blocks

log = logging.getLogger(__name__)
# The collective timeout of every strategy and of ``distributed.timeout_s`` (training/preemption.py, which says why
# 600 s): a stuck rank fails the run instead of hanging it.
DEFAULT_TIMEOUT_S = 600.0


def timeout_delta(timeout_s: float, owner: str) -> timedelta:
    if timeout_s <= 0:
        raise ValueError(f"{owner}: timeout_s must be > 0 seconds, got {timeout_s}")
    return timedelta(seconds=timeout_s)


def denoiser_of(module: pl.LightningModule) -> torch.nn.Module:
    denoiser = getattr(module, "denoiser", None)
    if denoiser is None:
        raise TypeError(
            f"activation_checkpointing needs a LightningModule with a `denoiser` attribute (AnimateXSystem); "
            f"{type(module).__name__} has none; set activation_checkpointing: false"
        )
    return denoiser


def checkpoint_denoiser_activations(module: pl.LightningModule) -> None:
    count = apply_activation_checkpointing(denoiser_of(module))
    rank_zero_info(f"activation checkpointing: {count} denoiser blocks recompute their activations in backward")


def _on_cpu(strategy: pl.strategies.Strategy) -> bool:
    return isinstance(strategy.accelerator, CPUAccelerator)


class AnimateXDDPStrategy(DDPStrategy):
    """Lightning's DDP, plus activation checkpointing and a timeout in seconds.

    Args:
        activation_checkpointing: recompute the denoiser blocks' activations in backward (less memory, ~1/3 more
            compute).
        process_group_backend: ``nccl`` / ``gloo``; None picks by device (CUDA: nccl, CPU: gloo).
        timeout_s: collective timeout; a rank stuck longer than this fails the run instead of hanging it.
        find_unused_parameters: DDP's flag; only needed if some parameters get no gradient in a step.
        gradient_as_bucket_view: let gradients alias DDP's buckets (saves one gradient copy).
    """

    def __init__(
        self,
        activation_checkpointing: bool = False,
        process_group_backend: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        find_unused_parameters: bool = False,
        gradient_as_bucket_view: bool = True,
    ):
        timeout = timeout_delta(timeout_s, "AnimateXDDPStrategy")
        super().__init__(
            process_group_backend=process_group_backend,
            timeout=timeout,
            find_unused_parameters=find_unused_parameters,
            gradient_as_bucket_view=gradient_as_bucket_view,
        )
        self.activation_checkpointing = activation_checkpointing

    def setup(self, trainer: pl.Trainer) -> None:
        if self.activation_checkpointing:
            checkpoint_denoiser_activations(self.lightning_module)
        super().setup(trainer)


class AnimateXDeepSpeedStrategy(DeepSpeedStrategy):
    """DeepSpeed ZeRO through Lightning, on CUDA as usual and on CPU (gloo) for tests.

    Args:
        stage: ZeRO stage: 1 shards the optimizer state, 2 also the gradients, 3 also the parameters.
        offload_optimizer: keep the optimizer state (and the fp32 master weights) in host memory and step on
            the CPU with DeepSpeed's CPU Adam (the recipe's AdamW is converted, groups and rates kept).
        offload_parameters: with stage 3, also keep the parameters in host memory between uses.
        exclude_frozen_parameters: leave parameters with ``requires_grad=False`` out of checkpoints.
        activation_checkpointing: recompute the denoiser blocks' activations in backward.
        zero3_leaf_blocks: with stage 3, gather each denoiser block's parameters at once (one all-gather per block)
            instead of per sub-module. ZeRO-3's per-module hooks cost Python time for each of the ~1,000 small
            modules (measured on CPU: most of a step); a block's parameters are at most ~50 M (100 MB in bf16).
        overlap_comm: overlap gradient reduction with backward.
        contiguous_gradients: copy gradients into one buffer as they are produced (less fragmentation).
        allgather_bucket_size: elements per all-gather bucket.
        reduce_bucket_size: elements per reduce bucket.
        pin_memory: pin offloaded host buffers (CUDA only; faster copies, more locked host memory).
        process_group_backend: None picks by device (CUDA: nccl, CPU: gloo).
        timeout_s: collective timeout in seconds.
        logging_level: DeepSpeed's logger level (``logging.WARN`` = 30).
    """

    def __init__(
        self,
        stage: Literal[1, 2, 3] = 2,
        offload_optimizer: bool = False,
        offload_parameters: bool = False,
        exclude_frozen_parameters: bool = True,
        activation_checkpointing: bool = False,
        zero3_leaf_blocks: bool = True,
        overlap_comm: bool = True,
        contiguous_gradients: bool = True,
        allgather_bucket_size: int = 200_000_000,
        reduce_bucket_size: int = 200_000_000,
        pin_memory: bool = False,
        process_group_backend: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        logging_level: int = logging.WARN,
    ):
        if stage not in (1, 2, 3):
            raise ValueError(f"AnimateXDeepSpeedStrategy: stage must be 1, 2 or 3, got {stage!r}")
        if offload_parameters and stage != 3:
            raise ValueError(
                f"AnimateXDeepSpeedStrategy: offload_parameters needs stage 3 (got stage {stage}); parameters are "
                "only partitioned, and so only offloadable, under ZeRO-3; use offload_optimizer with stages 1-2"
            )
        super().__init__(
            stage=stage,
            offload_optimizer=offload_optimizer,
            offload_parameters=offload_parameters,
            exclude_frozen_parameters=exclude_frozen_parameters,
            overlap_comm=overlap_comm,
            contiguous_gradients=contiguous_gradients,
            allgather_bucket_size=allgather_bucket_size,
            reduce_bucket_size=reduce_bucket_size,
            pin_memory=pin_memory,
            process_group_backend=process_group_backend,
            timeout=timeout_delta(timeout_s, "AnimateXDeepSpeedStrategy"),
            logging_level=logging_level,
        )
        self.stage = stage
        self.offload_optimizer = offload_optimizer
        self.activation_checkpointing = activation_checkpointing
        self.zero3_leaf_blocks = zero3_leaf_blocks

    # --- CPU overrides (CUDA keeps Lightning's behaviour) -------------------------------------------
    def setup_environment(self) -> None:
        if not _on_cpu(self):
            return super().setup_environment()
        from deepspeed.accelerator import get_accelerator

        if get_accelerator().device_name() != "cpu":
            raise RuntimeError(
                f"the trainer runs on CPU but DeepSpeed selected the {get_accelerator().device_name()!r} accelerator; "
                "set DS_ACCELERATOR=cpu in the environment before starting"
            )
        DDPStrategy.setup_environment(self)  # DeepSpeedStrategy's version refuses every non-CUDA accelerator

    def setup_distributed(self) -> None:
        if not _on_cpu(self):
            return super().setup_distributed()
        # Lightning checks that device indices equal local ranks; CPU devices have no index.
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    @property
    def root_device(self) -> torch.device:
        # DeepSpeedEngine compares `device_rank >= 0`; the CPU device's index is None. Rank 0 of "cpu" is the CPU.
        if self.accelerator is not None and _on_cpu(self):
            return torch.device("cpu", 0)
        return super().root_device

    # --- our additions ---------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer) -> None:
        if type(self.precision_plugin) is DeepSpeedPrecision:
            self.precision_plugin = _DeepSpeedBatchAsLoaded(self.precision_plugin.precision)
        if self.activation_checkpointing:
            checkpoint_denoiser_activations(self.lightning_module)
        if self.precision_plugin.precision != "32-true":
            # DeepSpeed's bf16/fp16 modes convert the module itself (no autocast); the step builds some inputs in
            # float32 (pixel conditions, noisy latents), which must meet the weights in their dtype.
            denoiser_of(self.lightning_module).register_forward_pre_hook(_inputs_to_weight_dtype, with_kwargs=True)
        if self.stage == 3 and self.zero3_leaf_blocks:
            from deepspeed.utils import set_z3_leaf_module

            for block in outermost_blocks(denoiser_of(self.lightning_module)):
                set_z3_leaf_module(block, True)
        super().setup(trainer)

    def init_deepspeed(self) -> None:
        with warnings.catch_warnings():
            # AnimateXSystem overrides configure_gradient_clipping to measure the gradient norm once under DDP/FSDP
            # (training/grad_norm.py); under DeepSpeed it leaves clipping to the engine, as this warning asks.
            warnings.filterwarnings("ignore", message="Since DeepSpeed handles gradient clipping internally")
            super().init_deepspeed()

    def _auto_select_batch_size(self) -> int:
        # DeepSpeed wants the micro-batch (it only logs with it); Lightning reads it from a batch sampler,
        # which our streaming loader does not have (it batches inside the stream).
        datamodule = getattr(self.lightning_module.trainer, "datamodule", None)
        return int(getattr(datamodule, "batch_size", None) or super()._auto_select_batch_size())

    def _init_optimizers(self):
        optimizer, scheduler_config = super()._init_optimizers()
        if self.offload_optimizer:
            optimizer = _to_cpu_adam(optimizer, scheduler_config)
        return optimizer, scheduler_config


class BatchAsLoaded:
    """Mixin for precision plugins: Lightning's DeepSpeed and FSDP precisions convert every floating-point tensor
    of the batch to their input dtype before the step (DeepSpeed bf16: the posterior's mean and std, hence the
    diffusion target, the CLIP features and the keypoint coordinates; fp32: the fp16 posterior widened), which DDP
    never does. A ``Batch`` reaches the system as the loader made it under every strategy; the denoiser's inputs
    are cast where the weights need it (DeepSpeed: the pre-hook below; DDP/FSDP mixed precision: autocast)."""

    def convert_input(self, data):
        return data if isinstance(data, Batch) else super().convert_input(data)


class _DeepSpeedBatchAsLoaded(BatchAsLoaded, DeepSpeedPrecision):
    """Lightning's DeepSpeed precision, the ``Batch`` left as loaded."""


def _inputs_to_weight_dtype(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook: floating-point inputs (tensors, and tensors inside dataclasses such as the conditions)
    cast to the dtype of the module's weights; integer inputs (timesteps) untouched."""
    dtype = next(module.parameters()).dtype

    def cast(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(dtype) if tensor.is_floating_point() else tensor

    return apply_to_collection(args, torch.Tensor, cast), apply_to_collection(kwargs, torch.Tensor, cast)


def _to_cpu_adam(optimizer: torch.optim.Optimizer, scheduler_config) -> torch.optim.Optimizer:
    """The recipe's AdamW as DeepSpeed's CPU Adam (same groups, rates and hyper-parameters).

    ZeRO-Offload steps on the host; DeepSpeed refuses a torch optimizer there (it would be several times
    slower), so the conversion happens here rather than in the system, which stays strategy-agnostic.
    """
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    if type(optimizer) is not torch.optim.AdamW:
        raise TypeError(
            f"offload_optimizer converts torch.optim.AdamW to DeepSpeedCPUAdam, got {type(optimizer).__name__}; "
            "use AdamW (model.optim) or set offload_optimizer: false"
        )
    if optimizer.state:
        raise RuntimeError("offload_optimizer: the optimizer already has state; convert it before the first step")
    defaults = optimizer.defaults
    if defaults.get("amsgrad"):
        raise ValueError("offload_optimizer: DeepSpeedCPUAdam is used without amsgrad; set amsgrad off")
    converted = DeepSpeedCPUAdam(
        [dict(group) for group in optimizer.param_groups],  # keeps names, per-group lr and the scheduler's initial_lr
        lr=defaults["lr"],
        betas=defaults["betas"],
        eps=defaults["eps"],
        weight_decay=defaults["weight_decay"],
        adamw_mode=True,
    )
    if scheduler_config is not None:
        scheduler_config.scheduler.optimizer = converted  # LambdaLR reads and writes optimizer.param_groups
    return converted
