"""A non-finite loss on one rank of a 2-process DDP run: both ranks act alike (stop, or skip and go on)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from support.tiny_dataset import PROBE_PATH, fit_args, fit_env, run_fit, shared_dataset

STEPS = 3


def _args(tmp_path_factory, run_dir, policy: str) -> list[str]:
    probe = (f"--trainer.callbacks+={{class_path: strategy_probe.RunProbe, init_args: "
             f"{{out_dir: {run_dir / 'probe'}, nan_latents_at_step: 1, nan_rank: 1}}}}")  # fmt: skip
    return [*fit_args(shared_dataset(tmp_path_factory), run_dir, max_steps=STEPS), "--trainer.devices", "2",
            "--trainer.strategy", "ddp", "--model.numerics.policy", policy, probe]  # fmt: skip


def test_skip_policy_drops_the_step_on_every_rank_and_training_goes_on(tmp_path_factory, tmp_path):
    run_dir = tmp_path / "skip"
    run_fit(_args(tmp_path_factory, run_dir, "skip"), fit_env(PROBE_PATH), timeout_s=240)
    facts = json.loads((run_dir / "probe" / "facts.json").read_text())
    assert facts["skipped_steps"] == 1  # rank 0 had a finite loss and skipped too
    losses = [json.loads((run_dir / "probe" / f"losses-rank{r}.json").read_text()) for r in (0, 1)]
    # The skipped step still counts as a step (weights and optimizer state unchanged, as the unit test shows);
    # both ranks return the exact-zero placeholder loss for it and train normally before and after.
    for rank_losses in losses:
        assert [s for s, _ in rank_losses] == list(range(1, STEPS + 1))
        assert [v == 0.0 for _, v in rank_losses] == [False, True, False]
    weights = load_file(str(run_dir / "probe" / "final_fp32.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_stop_policy_stops_every_rank_naming_the_rank_and_step(tmp_path_factory, tmp_path):
    with pytest.raises(AssertionError) as failure:
        run_fit(_args(tmp_path_factory, tmp_path / "stop", "stop"), fit_env(PROBE_PATH), timeout_s=240)
    assert "non-finite loss at step 1 on rank(s) [1]" in str(failure.value)
