"""Speed levers that leave the numbers alone, applied from outside the model (the ``performance:`` section).

* ``attention``: which attention kernel every attention of the denoiser runs (``models/attention.py``):
  ``auto`` (flash-attn when installed, else PyTorch's choice), ``flash_attn``, ``sdpa``, or SDPA pinned to
  one kernel with ``torch.nn.attention.sdpa_kernel`` (``sdpa_flash``, ``sdpa_cudnn``, ``sdpa_efficient``,
  ``math``). Logged at start, so a run's speed can be read next to the kernel it used.
* ``compile_blocks``: regional ``torch.compile`` of each outermost denoiser block (``nn.Module.compile``:
  the module tree, parameter names and checkpoints are unchanged; blocks compile on first use, so the first
  steps are slow). Composes with activation checkpointing (the recompute is traced into the block's graph).
  Refused under ZeRO-3 and sharded FSDP, whose per-module parameter hooks break graphs.
* ``channels_last``: NHWC memory format for the denoiser's 2D convolutions (cuDNN's preferred layout on
  tensor-core GPUs); the outputs are identical up to rounding.

The fused optimizer lever lives with the optimizer (``model.optim.fused``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from animatex_train.models.attention import ATTENTION_BACKENDS, AttentionBackend, set_attention_backend
from animatex_train.training.activation_checkpointing import outermost_blocks

log = logging.getLogger(__name__)
# Dynamo caches one graph per (block class, input shapes); the paper UNet has ~25 distinct block shapes, more
# than the default limit of 8 per code object, after which dynamo would silently fall back to eager.
_RECOMPILE_LIMIT = 64


@dataclass
class PerformanceConfig:
    """Attributes:
    attention: the attention kernel (see the module docstring).
    compile_blocks: ``torch.compile`` each outermost denoiser block.
    compile_mode: ``torch.compile`` mode (``default``, ``max-autotune-no-cudagraphs``, ...).
    compile_backend: ``torch.compile`` backend (``inductor`` generates fused kernels; ``aot_eager`` only
        captures the graphs, which tests use to check the capture quickly).
    channels_last: NHWC memory format for the denoiser's convolutions.
    """

    attention: AttentionBackend = "auto"
    compile_blocks: bool = False
    compile_mode: str = "default"
    compile_backend: str = "inductor"
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(
                f"performance.attention: expected one of {', '.join(ATTENTION_BACKENDS)}, got {self.attention!r}"
            )


def apply_performance_levers(denoiser: torch.nn.Module, config: PerformanceConfig) -> int:
    """Apply ``compile_blocks`` and ``channels_last`` to ``denoiser``; returns the number of compiled blocks.

    Pure module surgery, usable outside Lightning (benchmarks); the attention setting is process-wide and set
    by the caller (``set_attention_backend``).
    """
    if config.channels_last:
        to_channels_last(denoiser)
    if not config.compile_blocks:
        return 0
    dynamo = torch._dynamo.config
    dynamo.recompile_limit = max(dynamo.recompile_limit, _RECOMPILE_LIMIT)
    blocks = outermost_blocks(denoiser)
    for block in blocks:
        block.compile(
            backend=config.compile_backend,
            mode=None if config.compile_backend != "inductor" else config.compile_mode,
            dynamic=False,
        )
    return len(blocks)


def to_channels_last(module: torch.nn.Module) -> int:
    """NHWC storage for every 4-D parameter (2D conv kernels); returns how many were converted.

    ``Module.to(memory_format=channels_last)`` would also try the 5-D temporal conv kernels and fail; their
    3D layout (``channels_last_3d``) is a different question, left alone here.
    """
    count = 0
    with torch.no_grad():
        for param in module.parameters():
            if param.dim() == 4 and not param.is_contiguous(memory_format=torch.channels_last):
                param.data = param.data.contiguous(memory_format=torch.channels_last)
                count += 1
    return count


class PerformanceLevers(pl.Callback):
    """Applies ``PerformanceConfig`` to ``pl_module.denoiser`` before the strategy wraps it.

    Args: the fields of ``PerformanceConfig`` (each a ``performance.<name>`` key of the CLI).
    """

    def __init__(
        self,
        attention: AttentionBackend = "auto",
        compile_blocks: bool = False,
        compile_mode: str = "default",
        compile_backend: str = "inductor",
        channels_last: bool = False,
    ):
        self.config = PerformanceConfig(attention, compile_blocks, compile_mode, compile_backend, channels_last)
        self._previous_backend: AttentionBackend | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.config.compile_blocks:
            _refuse_compile_under_sharding(trainer.strategy)
        self._previous_backend = set_attention_backend(self.config.attention)
        compiled = apply_performance_levers(pl_module.denoiser, self.config)
        rank_zero_info(
            f"performance: attention={self.config.attention}, compiled blocks={compiled}, "
            f"channels_last={self.config.channels_last}"
        )
        for logger in trainer.loggers:
            logger.log_hyperparams({f"performance/{k}": v for k, v in asdict(self.config).items()})

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._previous_backend is not None:
            set_attention_backend(self._previous_backend)
            self._previous_backend = None


def _refuse_compile_under_sharding(strategy: pl.strategies.Strategy) -> None:
    name = type(strategy).__name__
    stage = getattr(strategy, "stage", None)
    sharding = getattr(getattr(strategy, "sharding_strategy", None), "name", "NO_SHARD")
    if ("DeepSpeed" in name and stage == 3) or ("FSDP" in name and sharding != "NO_SHARD"):
        raise ValueError(
            f"performance.compile_blocks: not supported with {name} (ZeRO stage {stage}, sharding {sharding}): "
            "parameter-gathering hooks run inside every block and break the compiled graphs; set "
            "performance.compile_blocks: false, or train with ZeRO-1/2 or DDP"
        )
