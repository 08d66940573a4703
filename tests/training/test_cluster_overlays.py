"""Cluster overlays (``recipes/cluster/*.yaml``): they build the intended strategy, and their global-batch comment
(micro-batch x accumulation x GPUs = global) agrees with their values."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from lightning.pytorch.strategies import DDPStrategy

from animatex_train.cli.lightning import AnimateXCLI
from animatex_train.training.strategy import AnimateXDDPStrategy, AnimateXDeepSpeedStrategy

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
OVERLAYS = sorted((RECIPES / "cluster").glob("*.yaml"))
EXPECTED = {  # overlay -> (strategy class, ZeRO stage or None, offload, activation checkpointing)
    "cpu_ddp2": (AnimateXDDPStrategy, None, False, False),
    "gpu1_zero2": (AnimateXDeepSpeedStrategy, 2, False, True),
    "h100x8_zero2": (AnimateXDeepSpeedStrategy, 2, False, True),
    "h100x8_zero3_offload": (AnimateXDeepSpeedStrategy, 3, True, True),
    "a100x8_zero2": (AnimateXDeepSpeedStrategy, 2, False, True),
    "multinode_zero2": (AnimateXDeepSpeedStrategy, 2, False, True),
}
BATCH_COMMENT = re.compile(r"micro-batch (\d+) x accumulation (\d+) x (\d+) (?:GPUs?|processes) = (\d+)")


def test_every_overlay_is_covered():
    assert sorted(p.stem for p in OVERLAYS) == sorted(EXPECTED)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.stem)
def test_overlay_builds_its_strategy_and_batch_arithmetic_holds(overlay):
    cli = AnimateXCLI(args=["--config", str(RECIPES / "debug" / "tiny_cpu.yaml"), "--config", str(overlay)], run=False)
    strategy_class, stage, offload, checkpointing = EXPECTED[overlay.stem]
    strategy = cli.trainer.strategy
    assert type(strategy) is strategy_class and isinstance(strategy, DDPStrategy)
    assert strategy.activation_checkpointing == checkpointing
    assert strategy._timeout.total_seconds() >= 300
    if stage is not None:
        zero = strategy.config["zero_optimization"]
        assert zero["stage"] == stage and strategy.exclude_frozen_parameters
        assert ("offload_optimizer" in zero) == offload and ("offload_param" in zero) == (offload and stage == 3)
    match = BATCH_COMMENT.search(overlay.read_text())
    assert match, f"{overlay.name}: no 'micro-batch A x accumulation B x N GPUs = G' comment"
    micro, accumulation, gpus, total = (int(g) for g in match.groups())
    assert micro == cli.datamodule.batch_size
    assert accumulation == cli.trainer.accumulate_grad_batches
    assert gpus == len(strategy.parallel_devices) * cli.trainer.num_nodes
    assert micro * accumulation * gpus == total
