"""A 2-process DDP run (gloo) of the tiny system equals a 1-process run with the same global batch.

Both runs see the same samples at every step (``global_batch_run.py``: rank r of 2 gets samples r, r + 2, ...
at micro-batch 2; the single process takes them 4 at a time), the system draws each sample's timestep and
noise from that sample's own generator, and the randomness that depends on a batch's composition (dropout
layers, the batch-coupled condition dropout) is off. What remains different is floating-point order: the
single process averages 4 per-sample losses, DDP averages two 2-sample means and all-reduces the gradients.
Tolerance: rtol 1e-5 on each step's global loss (measured: 4e-8), 1e-4 absolute on the weights after 4 steps
(measured: 2.7e-5, where Adam's normalisation magnifies reordering noise in near-zero gradients; Adam moves a
weight by about lr = 1e-3 per step, so a wrong gradient average or a skipped group is far outside it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from support.tiny_dataset import fit_env, shared_dataset

HERE = Path(__file__).resolve().parent
STEPS = 4


def _run(data: Path, out: Path, devices: int, batch_size: int) -> Path:
    command = [
        sys.executable,
        str(HERE / "global_batch_run.py"),
        "--data",
        str(data),
        "--out",
        str(out),
        "--devices",
        str(devices),
        "--batch-size",
        str(batch_size),
        "--steps",
        str(STEPS),
    ]
    result = subprocess.run(command, env=fit_env(HERE), cwd=HERE, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return out / "probe"


def test_two_ranks_equal_one_process_with_the_same_global_batch(tmp_path_factory, tmp_path):
    data = shared_dataset(tmp_path_factory)
    single = _run(data, tmp_path / "single", devices=1, batch_size=4)
    ddp = _run(data, tmp_path / "ddp", devices=2, batch_size=2)

    single_losses = json.loads((single / "losses-rank0.json").read_text())
    rank_losses = [json.loads((ddp / f"losses-rank{r}.json").read_text()) for r in (0, 1)]
    assert [s for s, _ in single_losses] == [s for s, _ in rank_losses[0]] == list(range(1, STEPS + 1))
    assert rank_losses[0] != rank_losses[1]  # the ranks really trained on different samples
    # Equal micro-batches: the global loss is the mean of the two ranks' losses.
    global_ddp = torch.tensor([(a + b) / 2 for (_, a), (_, b) in zip(*rank_losses, strict=True)], dtype=torch.float64)
    torch.testing.assert_close(
        global_ddp, torch.tensor([v for _, v in single_losses], dtype=torch.float64), rtol=1e-5, atol=0
    )

    single_weights = load_file(str(single / "final_fp32.safetensors"))
    ddp_weights = load_file(str(ddp / "final_fp32.safetensors"))
    assert single_weights.keys() == ddp_weights.keys()
    for name in single_weights:
        torch.testing.assert_close(ddp_weights[name], single_weights[name], rtol=0, atol=1e-4, msg=name)
