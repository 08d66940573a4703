"""``slurm/train.sbatch`` on a real (private, one-node) Slurm: a run finishes; a preempted run requeues and resumes.

Submitted through ``animatex-train submit`` on 2 CPU tasks with the tiny recipe; W&B offline. Skipped where
Slurm is not installed (see ``cluster.INSTALL``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support.tiny_dataset import TINY_RECIPE

from animatex_train.cli.submit import main as submit_main
from animatex_train.training.checkpoint import find_resume_checkpoint
from animatex_train.training.tracking import RUN_ID_FILE
from slurm.cluster import INSTALL, SlurmCluster, missing_binaries
from slurm.harness import HERE, fit_overrides, offline_runs, probe_events, run_env, tiny_dataset, wait_for_step

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.xdist_group("slurm"),  # one worker runs them all, on one private cluster
    pytest.mark.skipif(
        bool(missing_binaries()),
        reason=f"Slurm not installed ({', '.join(missing_binaries())} missing); to run these tests: {INSTALL}",
    ),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the private test cluster runs slurmd, which needs root")
    slurm = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        slurm.start()
        yield slurm
    finally:
        slurm.stop()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return tiny_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture
def job_env(cluster, monkeypatch):
    """The submitting environment; sbatch --export=ALL hands it to the job (probe importable, W&B offline)."""
    for key in [k for k in os.environ if k.startswith(("SLURM_", "SBATCH_", "SRUN_"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])))


def submit(capsys, run_dir: Path, overrides: list[str]) -> str:
    """``animatex-train submit train`` of the tiny recipe on 2 CPU tasks; returns the job id."""
    code = submit_main(
        [
            "train",
            "--recipe",
            str(TINY_RECIPE),
            "--nodes",
            "1",
            "--gpus-per-node",
            "0",
            "--ntasks-per-node",
            "2",
            "--cpus-per-task",
            "1",
            "--time",
            "10:00",
            "--run-dir",
            str(run_dir),
            "--log-dir",
            str(run_dir.parent / "logs"),
            "--",
            *overrides,
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    return re.fullmatch(r"submitted train: (\d+)\n", out).group(1)


def slurm_log(run_dir: Path, job_id: str) -> str:
    return (run_dir.parent / "logs" / f"animatex-train-{job_id}.out").read_text()


def test_train_sbatch_runs_to_a_checkpoint(cluster, manifest, job_env, tmp_path, capsys):
    run_dir = tmp_path / "run"
    job_id = submit(capsys, run_dir, fit_overrides(manifest, run_dir, max_steps=4))
    job = cluster.wait_for(job_id, lambda j: j["JobState"] == "COMPLETED", "completion", timeout=240)
    assert job["ExitCode"] == "0:0", slurm_log(run_dir, job_id)
    checkpoint = find_resume_checkpoint(run_dir / "checkpoints")
    assert checkpoint is not None and checkpoint.parent.name == "step-000000004", slurm_log(run_dir, job_id)
    assert [r["step"] for r in probe_events(run_dir, "start")] == [0, 0]  # two ranks, from scratch
    assert len(offline_runs(run_dir)) == 1


def test_usr1_checkpoints_requeues_and_the_requeued_job_resumes(cluster, manifest, job_env, tmp_path, capsys):
    run_dir = tmp_path / "run"
    job_id = submit(capsys, run_dir, fit_overrides(manifest, run_dir, max_steps=40))
    wait_for_step(run_dir, ranks=2, step=2, timeout=240)
    # What Slurm does at --signal=USR1@<lead>: SIGUSR1 to every process of the job's steps.
    cluster.run(["scancel", "--signal=USR1", job_id])
    job = cluster.wait_for(
        job_id, lambda j: j.get("Restarts") == "1" and j["JobState"] == "PENDING", "the requeue", timeout=120
    )
    saves = probe_events(run_dir, "save")
    assert len(saves) == 2 and len({s["step"] for s in saves}) == 1, saves  # one checkpoint, both ranks
    saved_step = saves[0]["step"]
    assert 2 <= saved_step < 40 and not any(s["in_signal_handler"] or s["in_backward"] for s in saves)
    assert find_resume_checkpoint(run_dir / "checkpoints").parent.name == f"step-{saved_step:09d}"
    run_id = (run_dir / RUN_ID_FILE).read_text().strip()
    # Slurm holds a requeued job for ~2 minutes (BeginTime); release it now to keep the test short.
    if job.get("Reason") == "BeginTime":
        cluster.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"])
    job = cluster.wait_for(job_id, lambda j: j["JobState"] == "COMPLETED", "the requeued run", timeout=300)
    log = slurm_log(run_dir, job_id)
    assert job["ExitCode"] == "0:0", log
    assert "(restart 0)" in log and "(restart 1)" in log and f"requeued Slurm job {job_id}" in log, log
    assert sorted(r["step"] for r in probe_events(run_dir, "start")) == [0, 0, saved_step, saved_step]
    assert find_resume_checkpoint(run_dir / "checkpoints").parent.name == "step-000000040"
    assert (run_dir / RUN_ID_FILE).read_text().strip() == run_id
    runs = offline_runs(run_dir)
    assert len(runs) == 2 and all(p.name == f"run-{run_id}.wandb" for p in runs), runs


def test_eval_sbatch_validates_a_tiny_fits_checkpoint(cluster, manifest, job_env, tmp_path, capsys):
    """``slurm/eval.sbatch`` runs ``validate --ckpt_path <the run's newest state.ckpt>`` (issue 19): it must load a
    checkpoint written by ``fit`` (the saved hyperparameters are not re-parsed, see cli/lightning.py)."""
    run_dir = tmp_path / "run"
    fit = subprocess.run(
        [
            sys.executable,
            "-m",
            "animatex_train",
            "fit",
            "--config",
            str(TINY_RECIPE),
            *fit_overrides(manifest, run_dir, max_steps=2, extra=["--checkpoint.every_n_steps=2"]),
        ],
        cwd=HERE.parents[1],
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    code = submit_main(
        [
            "eval",
            "--recipe",
            str(TINY_RECIPE),
            "--nodes",
            "1",
            "--gpus-per-node",
            "0",
            "--ntasks-per-node",
            "1",
            "--cpus-per-task",
            "1",
            "--time",
            "10:00",
            "--run-dir",
            str(run_dir),
            "--log-dir",
            str(tmp_path / "logs"),
            "--",
            *fit_overrides(manifest, tmp_path / "eval", max_steps=2, validate=True),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    job_id = re.fullmatch(r"submitted eval: (\d+)\n", out).group(1)
    job = cluster.wait_for(job_id, lambda j: j["JobState"] in ("COMPLETED", "FAILED"), "completion", timeout=300)
    log = (tmp_path / "logs" / f"animatex-eval-{job_id}.out").read_text()
    assert job["ExitCode"] == "0:0" and "val/loss" in log, log[-4000:]
    assert f"validate {run_dir}/checkpoints/step-000000002/state.ckpt" in log, log[-4000:]
