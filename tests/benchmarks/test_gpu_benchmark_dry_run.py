"""``benchmarks/gpu/run.sh --dry-run``: the GPU benchmark's every stage, on the CPU with the tiny model and clips.

What the GPU run does on a lent H200 in one call (which must not fail on a plumbing error that a CPU could have
found): step timings per attention setting, a profile, data made through the CLI, a ``fit`` that validates,
checkpoints and logs throughput, a resumed ``fit``, and the GPU test selection (skipped here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # about 2 minutes on 2 idle cores
def test_dry_run_reports_every_stage(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "WORK": str(tmp_path / "work"), "PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", "benchmarks/gpu/run.sh", "--dry-run", "--skip", "compile", "--budget-s", "500"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "==== summary ====" in result.stdout
    stages = json.loads((out / "gpu_report.json").read_text())["stages"]
    assert not [name for name, entry in stages.items() if "error" in entry or "skipped" in entry and name != "compile"]
    rows = stages["steps"]["result"]["rows"]
    assert [(r["batch"], r["attention"]) for r in rows] == [(1, "sdpa"), (1, "math")]
    assert all(r["ms_per_step"] > 0 and r["samples_per_s"] > 0 for r in rows)
    assert stages["profile"]["result"]["top"]
    assert stages["dataset"]["result"]["returncode"] == 0
    fit = stages["fit"]["result"]
    assert fit["returncode"] == 0 and fit["samples_per_s"] > 0 and 0 <= fit["data_wait_fraction"] < 1
    assert fit["checkpoints"] == ["step-000000004"] and fit["sample_videos"]  # validation rendered its clip
    resume = stages["resume"]["result"]
    assert resume["returncode"] == 0 and resume["steps_after_resume"] == [4, 5]  # continued from step 4
    assert stages["gpu_tests"]["result"]["returncode"] == 0
    assert (out / "gpu_run.log").read_text().strip()
