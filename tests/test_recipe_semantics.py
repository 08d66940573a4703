"""What every recipe trains, as resolved by the CLI (issue 14): each training recipe alone and layered with each
cluster overlay, and each ablation overlay on the paper recipe at micro-batch 2, resolves to

* per-sample keypoints (``model.denoiser.ipi.keypoint_row_order: per_sample``);
* a trained unconditional branch (condition dropout on, with an all-dropped group that loses the reference slot
  and the IPI inputs too: ``tests/models/test_training_semantics.py`` proves that group is the sampler's branch);
* the global batch the overlay's header comment states (micro-batch x accumulation x GPUs), the same for every GPU
  overlay;
* a system whose ``setup`` accepts the run: the strategy supports the numerics policy (DeepSpeed cannot skip a step)
  and the keypoint row order suits the micro-batch.

The recipes are resolved through ``AnimateXCLI`` as ``animatex-train fit`` resolves them, with the denoiser built on
the meta device (the paper's 1.8 B parameters are never allocated) and no checkpoint loaded.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import animatex_train.system as system_module
from animatex_train.cli.lightning import AnimateXCLI
from animatex_train.models.unet import AnimateXDenoiser

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
BASES = sorted((RECIPES / "train").glob("*.yaml")) + [RECIPES / "debug" / "tiny_cpu.yaml"]
CLUSTER = sorted((RECIPES / "cluster").glob("*.yaml"))
ABLATIONS = sorted((RECIPES / "ablations").glob("*.yaml"))
PAPER = RECIPES / "train" / "animatex_paper.yaml"
MICRO_BATCH_2 = RECIPES / "cluster" / "h100x8_zero2.yaml"  # where a mispaired keypoint row order would bite
PAPER_GLOBAL_BATCH = 32  # VGen's default for 32-frame clips (4 per GPU x 8), stated by every GPU overlay
BATCH_COMMENT = re.compile(r"Global batch: micro-batch (\d+) x accumulation (\d+) x (\d+) (GPUs?|processes) = (\d+)")


def _name(path: Path) -> str:
    return str(path.relative_to(RECIPES).with_suffix(""))


class _AttachedTrainer:
    """The CLI's trainer as ``fit`` presents it to ``setup``: with the data module attached."""

    def __init__(self, trainer, datamodule):
        self._trainer, self.datamodule = trainer, datamodule

    def __getattr__(self, name: str):
        return getattr(self._trainer, name)


@pytest.fixture
def resolve(monkeypatch):
    """``resolve(*recipes, *extra_args)``: the CLI of the layered recipes, its system set up for ``fit``."""

    def on_meta(config):
        with torch.device("meta"):
            return AnimateXDenoiser(config)

    monkeypatch.setattr(system_module, "AnimateXDenoiser", on_meta)

    def _resolve(*recipes: Path, extra: tuple[str, ...] = ()) -> AnimateXCLI:
        args = [a for recipe in recipes for a in ("--config", str(recipe))]
        cli = AnimateXCLI(args=[*args, "--model.init.checkpoint=null", *extra], run=False)
        system = cli.model
        denoiser = system.config.denoiser
        empty_prompt = torch.zeros(1, denoiser.num_text_tokens, denoiser.context_dim)
        monkeypatch.setattr(system, "_empty_prompt_tokens", lambda: empty_prompt)  # no CLIP text tower
        system.trainer = _AttachedTrainer(cli.trainer, cli.datamodule)
        system.setup("fit")  # raises where the strategy, the numerics policy or the row order refuse the run
        return cli

    return _resolve


def assert_trains_the_paper_model(cli: AnimateXCLI) -> None:
    denoiser = cli.model.config.denoiser
    assert next(cli.model.denoiser.parameters()).is_meta  # nothing was allocated
    assert denoiser.ipi.keypoint_row_order == "per_sample"
    dropout = denoiser.condition_dropout
    assert dropout.enabled and dropout.p_all_zero > 0, "no all-dropped group: the unconditional branch is untrained"
    assert dropout.all_dropped_loses_reference and dropout.all_dropped_loses_ipi


def stated_global_batch(cli: AnimateXCLI, overlay: Path) -> tuple[int, str]:
    """The overlay's stated global batch and unit, after checking each factor against the resolved values."""
    match = BATCH_COMMENT.search(overlay.read_text())
    assert match, f"{overlay.name}: no 'Global batch: micro-batch A x accumulation B x N GPUs = G' comment"
    micro, accumulation, devices, total = (int(match.group(i)) for i in (1, 2, 3, 5))
    trainer = cli.trainer
    assert cli.datamodule.batch_size == micro, f"{overlay.name}: data.batch_size"
    assert trainer.accumulate_grad_batches == accumulation, f"{overlay.name}: trainer.accumulate_grad_batches"
    assert len(trainer.strategy.parallel_devices) * trainer.num_nodes == devices, f"{overlay.name}: devices x nodes"
    resolved = cli.config.data.batch_size * cli.config.trainer.accumulate_grad_batches
    resolved *= cli.config.trainer.devices * cli.config.trainer.num_nodes
    assert resolved == total, f"{overlay.name}: the resolved global batch is {resolved}, the comment says {total}"
    return total, match.group(4)


@pytest.mark.parametrize("base", BASES, ids=_name)
def test_each_training_recipe_alone(resolve, base):
    assert_trains_the_paper_model(resolve(base))


@pytest.mark.parametrize("overlay", CLUSTER, ids=_name)
@pytest.mark.parametrize("base", BASES, ids=_name)
def test_each_training_recipe_on_each_cluster(resolve, base, overlay):
    cli = resolve(base, overlay)
    assert_trains_the_paper_model(cli)
    total, unit = stated_global_batch(cli, overlay)
    if unit.startswith("GPU"):  # the GPU overlays change where the recipe trains, never what it trains
        assert total == PAPER_GLOBAL_BATCH


@pytest.mark.parametrize("ablation", ABLATIONS, ids=_name)
def test_each_ablation_on_the_paper_recipe_at_micro_batch_2(resolve, ablation):
    cli = resolve(PAPER, MICRO_BATCH_2, ablation)
    assert_trains_the_paper_model(cli)
    assert stated_global_batch(cli, MICRO_BATCH_2) == (PAPER_GLOBAL_BATCH, "GPUs")


@pytest.mark.parametrize("overlay", [o for o in CLUSTER if "DeepSpeed" in o.read_text()], ids=_name)
def test_setup_refuses_the_skip_policy_under_deepspeed(resolve, overlay):
    # The check above is real: an unsupported policy for the strategy fails at setup, naming the key.
    with pytest.raises(ValueError, match=r"model\.numerics\.policy: skip is not supported under DeepSpeed"):
        resolve(PAPER, overlay, extra=("--model.numerics.policy=skip",))


def test_setup_refuses_the_official_row_order_at_micro_batch_2(resolve):
    # The case: the paper recipe on the H100 overlay with the official order would train mispaired samples.
    with pytest.raises(ValueError, match=r"model\.denoiser\.ipi\.keypoint_row_order: official"):
        resolve(PAPER, MICRO_BATCH_2, extra=("--model.denoiser.ipi.keypoint_row_order=official",))
