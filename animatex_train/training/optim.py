"""Parameter groups and the learning-rate schedule.

The paper trains the implicit pose indicator at 5e-7 and everything else at 5e-5 (docs/official_release.md §5).
Which modules count as "the IPI" is not stated: by default the keypoint encoder and the extractor
(``ipi.``) get the IPI rate, and the pose-attention blocks, which live inside the UNet's spatial
transformers, get the base rate [INFERRED]; ``ipi_param_prefixes`` changes that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class OptimConfig:
    """AdamW with two learning rates, linear warm-up, then constant or cosine decay.

    Attributes:
        lr: base learning rate (everything not matched by ``ipi_param_prefixes``).
        ipi_lr: learning rate of the implicit pose indicator.
        ipi_param_prefixes: denoiser parameter-name prefixes (or ``.infix.`` fragments) that get ``ipi_lr``.
        betas: AdamW betas.
        eps: AdamW epsilon.
        weight_decay: AdamW weight decay (VGen: 0).
        lr_warmup_steps: linear warm-up from 0 over this many optimizer steps.
        lr_schedule: ``constant`` after warm-up, or ``cosine`` decay to ``min_lr_ratio * lr`` at ``lr_decay_steps``.
        lr_decay_steps: length of the cosine schedule in optimizer steps (defaults to the trainer's max_steps).
        min_lr_ratio: floor of the cosine schedule as a fraction of each group's rate.
        fused: AdamW's single-kernel implementation (``fused=True``): one launch per step instead of a dozen
            per parameter list; same update up to rounding. None: fused when the parameters are on a GPU
            (PyTorch's own default is the multi-tensor ``foreach`` path), else ``foreach``.
    """

    lr: float = 5e-5
    ipi_lr: float = 5e-7
    ipi_param_prefixes: list[str] = field(default_factory=lambda: ["ipi."])
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    lr_warmup_steps: int = 10
    lr_schedule: str = "constant"
    lr_decay_steps: int | None = None
    min_lr_ratio: float = 0.0
    fused: bool | None = None

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"model.optim.lr must be > 0, got {self.lr}")
        if self.ipi_lr < 0:
            raise ValueError(f"model.optim.ipi_lr must be >= 0, got {self.ipi_lr}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"model.optim.lr_schedule must be constant or cosine, got {self.lr_schedule!r}")
        if self.lr_warmup_steps < 0:
            raise ValueError(f"model.optim.lr_warmup_steps must be >= 0, got {self.lr_warmup_steps}")
        if self.lr_decay_steps is not None and self.lr_decay_steps < 1:
            raise ValueError(f"model.optim.lr_decay_steps must be >= 1 (or null), got {self.lr_decay_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:  # outside [0, 1] the cosine would raise the rate or turn it negative
            raise ValueError(f"model.optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        self.betas = tuple(self.betas)


def is_ipi_parameter(name: str, prefixes: list[str]) -> bool:
    return any(name.startswith(p) or (p.startswith(".") and p in name) for p in prefixes)


def parameter_groups(model: nn.Module, config: OptimConfig) -> list[dict]:
    """AdamW groups of the trainable parameters of ``model`` (frozen ones are never included)."""
    base, ipi = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (ipi if is_ipi_parameter(name, config.ipi_param_prefixes) else base).append(param)
    groups = [{"name": "base", "params": base, "lr": config.lr}]
    if ipi:
        groups.append({"name": "ipi", "params": ipi, "lr": config.ipi_lr})
    return groups


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, config)
    fused = config.fused
    if fused is None:
        fused = any(p.is_cuda for group in groups for p in group["params"])
    return torch.optim.AdamW(
        groups, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay, fused=fused or None
    )


def lr_multiplier(step: int, config: OptimConfig, total_steps: int | None) -> float:
    """Factor applied to every group's base rate at optimizer step ``step`` (0-based)."""
    if config.lr_warmup_steps and step < config.lr_warmup_steps:
        return (step + 1) / config.lr_warmup_steps
    if config.lr_schedule == "constant":
        return 1.0
    decay = config.lr_decay_steps or total_steps
    if not decay or decay <= config.lr_warmup_steps:
        return 1.0
    progress = min(1.0, (step - config.lr_warmup_steps) / (decay - config.lr_warmup_steps))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig, total_steps: int | None):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, config, total_steps))
