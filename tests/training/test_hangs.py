"""Hangs become errors (docs/reliability.md F24, G10).

A loader worker stopped mid-run (SIGSTOP: it cannot act on SIGTERM, like a process stuck on a hung filesystem)
used to leave the run alive for ever after the DataLoader timeout (docs/reliability.md probe D3). Now the run ends
non-zero with one error line naming the worker; ``run_fit``'s budget turns a hang into a test failure.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support.tiny_dataset import PROBE_PATH, build_tiny_dataset, fit_args, fit_env, run_fit


def test_a_stalled_loader_worker_ends_the_run_naming_it(tmp_path):
    build_tiny_dataset(tmp_path / "data")
    args = [
        *fit_args(tmp_path / "data", tmp_path / "run", max_steps=40),
        "--data.num_workers",
        "1",
        "--data.loader_timeout_s",
        "10",
        "--trainer.callbacks+=hang_faults.StopLoaderWorkers",
    ]
    with pytest.raises(AssertionError, match="exit code") as failure:
        run_fit(args, fit_env(PROBE_PATH), timeout_s=300)
    output = str(failure.value)
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output[-4000:]
    assert "worker 0 (pid" in errors[0] and "produced no batch for 10.0 s" in errors[0] and "killed" in errors[0]
    assert "Traceback" not in output


def test_a_stalled_rank_is_named_and_does_not_outlive_the_others(tmp_path):
    """2 DDP ranks, rank 1 stalls after step 2: rank 0's collective times out (distributed.timeout_s), the error
    names rank 1 (``training/hang_watch.py``), and rank 1 is killed instead of running on, orphaned (D4)."""
    build_tiny_dataset(tmp_path / "data")
    pid_file = tmp_path / "stalled.pid"
    stall = f"--trainer.callbacks+={{class_path: hang_faults.StallRank, init_args: {{pid_file: {pid_file}}}}}"
    args = [
        *fit_args(tmp_path / "data", tmp_path / "run", max_steps=8),
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--distributed.timeout_s",
        "60",
        stall,
    ]
    with pytest.raises(AssertionError, match="exit code") as failure:
        run_fit(args, fit_env(PROBE_PATH), timeout_s=300)
    output = str(failure.value)
    errors = [line for line in output.splitlines() if line.startswith("error:") and "stalled: rank 1" in line]
    # the stall starts inside step 2's end-of-batch hooks, before its heartbeat: rank 1 last finished step 1
    assert errors and "stalled: rank 1 (last finished step 1" in errors[0], output[-4000:]
    assert "the others reached step 2" in errors[0] and "Traceback" not in output
    pid = int(pid_file.read_text())
    for _ in range(60):  # SIGKILL is asynchronous: give the kernel a moment to reap it
        if not Path(f"/proc/{pid}").exists() or "Z" in _state(pid):
            break
        time.sleep(0.5)
    assert not Path(f"/proc/{pid}").exists() or "Z" in _state(pid), f"the stalled rank {pid} outlived the run"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def test_lagging_ranks_are_the_ones_behind_the_furthest():
    from animatex_train.training.hang_watch import lagging_ranks

    assert lagging_ranks({0: (3, 0.0), 1: (2, 0.0), 2: (3, 0.0)}) == [1]
    assert lagging_ranks({0: (3, 0.0), 1: (3, 0.0)}) == [] and lagging_ranks({}) == []
