"""``torchrun --max-restarts=1`` (docs/reliability.md F7): refused at start-up with a message pointing at the Slurm
requeue path, and the launcher gives up after its restarts instead of hanging (docs/reliability.md probe D7)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from support.tiny_dataset import REPO_ROOT, build_tiny_dataset, fit_args, fit_env, time_budget


@pytest.mark.slow
def test_torchrun_with_restarts_is_refused_clearly(tmp_path):
    build_tiny_dataset(tmp_path / "data")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc-per-node=1",
        "--max-restarts=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port}",
        "-m",
        "animatex_train",
        *fit_args(tmp_path / "data", tmp_path / "run", max_steps=2),
    ]
    proc = subprocess.run(
        command, cwd=REPO_ROOT, env=fit_env(), capture_output=True, text=True, timeout=time_budget(300)
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    refusals = [line for line in output.splitlines() if "error:" in line and "--max-restarts=1" in line]
    assert refusals and "slurm/train.sbatch" in refusals[0], output[-3000:]
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained
