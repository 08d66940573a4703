"""A non-finite loss or gradient on one rank of a 2-process run (DDP, FSDP, ZeRO-2): both ranks see it in the same
step and act alike (stop, or skip and go on).

A non-finite gradient is made on rank 1 alone, with a finite loss (``numerics_probe``: NaN flows back from the
denoiser's output). Under ZeRO-2 the gradients live in DeepSpeed's partitioned buffers and under FSDP each rank
holds a shard, so a check of ``p.grad`` would see nothing or one shard; the global norm of the step sees it on
every rank.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from support.numerics_runs import numerics_probe_arg, read_numerics
from support.tiny_dataset import PROBE_PATH, fit_args, fit_env, run_fit, shared_dataset

STEPS = 3
DS_ZERO2 = [
    "--trainer.strategy",
    "animatex_train.training.strategy.AnimateXDeepSpeedStrategy",
    "--trainer.strategy.stage",
    "2",
]
FSDP = [
    "--trainer.strategy",
    "animatex_train.training.strategy_fsdp.AnimateXFSDPStrategy",  # an init arg makes it a class
    "--trainer.strategy.sharding_strategy",
    "FULL_SHARD",
    "--model.ema.enabled",
    "false",
]


def _args(
    tmp_path_factory, run_dir, policy: str, strategy: list[str], nan_latents: bool = False, nan_grad: bool = False
) -> list[str]:
    """A 2-rank run; at step 1, rank 1's latents (``nan_latents``: a NaN loss) or gradients (``nan_grad``) are NaN."""
    run_probe = (
        f"--trainer.callbacks+={{class_path: strategy_probe.RunProbe, init_args: "
        f"{{out_dir: {run_dir / 'probe'}, nan_latents_at_step: {1 if nan_latents else -1}, nan_rank: 1}}}}"
    )
    numerics = numerics_probe_arg(nan_grad_at_step=1 if nan_grad else -1, nan_grad_rank=1)
    return [
        *fit_args(shared_dataset(tmp_path_factory), run_dir, max_steps=STEPS),
        "--trainer.devices",
        "2",
        *strategy,
        "--model.numerics.policy",
        policy,
        run_probe,
        numerics,
    ]


def _assert_both_ranks_skipped_step_1_only(run_dir) -> None:
    for rank in (0, 1):
        steps = read_numerics(run_dir, rank)["steps"]
        assert [(s["step"], s["skipped"]) for s in steps] == [(1, False), (2, True), (3, False)]
        assert not math.isfinite(steps[1]["grad_norm"]) and all(math.isfinite(steps[i]["grad_norm"]) for i in (0, 2))
    facts = json.loads((run_dir / "probe" / "facts.json").read_text())
    assert facts["skipped_steps"] == 1
    weights = load_file(str(run_dir / "probe" / "final_fp32.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def _assert_both_ranks_stopped(run_dir, what: str) -> None:
    for rank in (0, 1):
        record = read_numerics(run_dir, rank)
        assert [s["step"] for s in record["steps"]] == [1]  # step 0 trained, step 1 stopped: on both ranks
        assert record["exception"].startswith("NonFiniteError")
        assert f"non-finite {what} at step 1" in record["exception"] and f"this is rank {rank}" in record["exception"]


def test_ddp_skip_drops_a_non_finite_loss_step_on_every_rank_and_goes_on(tmp_path_factory, tmp_path):
    run_dir = tmp_path / "skip"
    run_fit(
        _args(tmp_path_factory, run_dir, "skip", ["--trainer.strategy", "ddp"], nan_latents=True),
        fit_env(PROBE_PATH),
        timeout_s=240,
    )
    _assert_both_ranks_skipped_step_1_only(run_dir)
    losses = [json.loads((run_dir / "probe" / f"losses-rank{r}.json").read_text()) for r in (0, 1)]
    assert [s for s, _ in losses[0]] == [s for s, _ in losses[1]] == list(range(1, STEPS + 1))
    assert math.isnan(losses[1][1][1]) and math.isfinite(losses[0][1][1])  # only rank 1's loss was NaN


def test_ddp_stop_stops_every_rank_naming_the_rank_and_step(tmp_path_factory, tmp_path):
    run_dir = tmp_path / "stop"
    with pytest.raises(AssertionError):
        run_fit(
            _args(tmp_path_factory, run_dir, "stop", ["--trainer.strategy", "ddp"], nan_latents=True),
            fit_env(PROBE_PATH),
            timeout_s=240,
        )
    _assert_both_ranks_stopped(run_dir, "loss")
    assert "on rank(s) [1]" in read_numerics(run_dir, 0)["exception"]  # rank 0 names the rank that had it


def test_fsdp_skip_drops_a_non_finite_gradient_of_one_rank_on_every_rank(tmp_path_factory, tmp_path):
    run_dir = tmp_path / "fsdp"
    run_fit(_args(tmp_path_factory, run_dir, "skip", FSDP, nan_grad=True), fit_env(PROBE_PATH), timeout_s=240)
    _assert_both_ranks_skipped_step_1_only(run_dir)


def test_zero2_stop_stops_every_rank_on_a_non_finite_gradient_of_one_rank(tmp_path_factory, tmp_path):
    run_dir = tmp_path / "zero2"
    with pytest.raises(AssertionError):
        run_fit(_args(tmp_path_factory, run_dir, "stop", DS_ZERO2, nan_grad=True), fit_env(PROBE_PATH), timeout_s=240)
    _assert_both_ranks_stopped(run_dir, "gradient")
