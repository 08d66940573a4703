"""Hangs become errors (RELIABILITY.md F24, G10).

A loader worker stopped mid-run (SIGSTOP: it cannot act on SIGTERM, like a process stuck on a hung filesystem)
used to leave the run alive for ever after the DataLoader timeout (RELIABILITY_PROBE.md D3). Now the run ends
non-zero with one error line naming the worker; ``run_fit``'s budget turns a hang into a test failure.
"""

from __future__ import annotations

import pytest
from support.tiny_dataset import PROBE_PATH, build_tiny_dataset, fit_args, fit_env, run_fit


def test_a_stalled_loader_worker_ends_the_run_naming_it(tmp_path):
    build_tiny_dataset(tmp_path / "data")
    args = [*fit_args(tmp_path / "data", tmp_path / "run", max_steps=40), "--data.num_workers", "1",
            "--data.loader_timeout_s", "10", "--trainer.callbacks+=hang_faults.StopLoaderWorkers"]  # fmt: skip
    with pytest.raises(AssertionError, match="exit code") as failure:
        run_fit(args, fit_env(PROBE_PATH), timeout_s=300)
    output = str(failure.value)
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output[-4000:]
    assert "worker 0 (pid" in errors[0] and "produced no batch for 10.0 s" in errors[0] and "killed" in errors[0]
    assert "Traceback" not in output
