"""The global gradient norm of an optimizer step under every strategy, computed once per step and shared by
gradient clipping, the non-finite guard (``training/numerics.py``) and the ``train/grad_norm`` log.

Where the norm comes from:

* DDP and a single device: after backward every rank holds the full, averaged gradients. ``get_total_norm`` takes
  one fused norm per (device, dtype) group and returns a device tensor (no host sync); clipping then scales the
  gradients by that norm (``clip_grads_with_norm_``). Together they are exactly ``clip_grad_norm_``, which
  Lightning's own clipping calls on the same parameters (the optimizer's), so the numbers stay bitwise Lightning's.
* FSDP: each rank holds a shard of the gradients. ``FullyShardedDataParallel.clip_grad_norm_`` sums the shards'
  squared norms over the ranks (one all-reduce) and clips. Without clipping it is called with ``max_norm = inf``:
  the clip factor ``inf / (norm + 1e-6)`` is clamped to exactly 1, so the gradients are unchanged.
* DeepSpeed (ZeRO 1-3): the engine keeps the reduced gradients in its own partitioned buffers (``p.grad`` is None
  or one partition) and computes the global norm inside ``engine.step()`` (all-reduced over the data-parallel
  group), where it also clips and, if the norm is not finite, drops the update and the step's gradients
  (deepspeed 0.19.8: stage 1/2 in fp32, fp16, and bf16 with its default ``check_grad_overflow``; stage 3 always).
  Computing the norm before the step would repeat that pass and its collective over buffers that each ZeRO stage
  lays out differently (private attributes), for a number the engine computes anyway; so ``clip_and_measure``
  returns None there and ``deepspeed_step_norm`` reads the engine's norm after its step.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.utilities import GradClipAlgorithmType


def clip_and_measure(
    trainer: pl.Trainer, optimizer: torch.optim.Optimizer, clip_val: float | None, algorithm: str | None
) -> torch.Tensor | None:
    """Clip the gradients as ``trainer.gradient_clip_*`` asks and return their global L2 norm before clipping.

    Call after backward, before the optimizer step (Lightning's ``configure_gradient_clipping`` hook).

    Args:
        trainer: the trainer (its strategy decides where the gradients are).
        optimizer: the optimizer whose parameters' gradients are measured.
        clip_val: ``trainer.gradient_clip_val``; None or 0: no clipping.
        algorithm: ``norm`` (default) or ``value``.

    Returns:
        The norm as a 0-dim device tensor (not read on the host), the same on every rank; None under DeepSpeed,
        whose engine measures (and clips) inside its step: read it with ``deepspeed_step_norm`` afterwards.
    """
    strategy = trainer.strategy
    if isinstance(strategy, DeepSpeedStrategy):
        return None
    by_value = algorithm == GradClipAlgorithmType.VALUE
    max_norm = clip_val if clip_val and not by_value else math.inf
    params = [p for group in optimizer.param_groups for p in group["params"]]  # what Lightning's clipping takes
    if isinstance(strategy, FSDPStrategy):
        norm = strategy.model.clip_grad_norm_(max_norm)  # collective: every rank calls it, every step
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        if math.isfinite(max_norm):
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    if clip_val and by_value:
        torch.nn.utils.clip_grad_value_(params, clip_val)
    return norm


def deepspeed_engine(trainer: pl.Trainer):
    """The DeepSpeed engine when the strategy is DeepSpeed (the norm is then the engine's), else None."""
    return trainer.strategy.deepspeed_engine if isinstance(trainer.strategy, DeepSpeedStrategy) else None


def deepspeed_step_norm(engine) -> torch.Tensor | float | None:
    """The global gradient norm the DeepSpeed engine measured in its last ``step()`` (before clipping).

    A 0-dim device tensor after an applied step; ``float("inf")`` when the engine found it non-finite (it then
    skipped the update); None if the engine computes no norm (``zero_optimization.compute_grad_norm: false``).
    """
    return engine.get_global_grad_norm()
