"""``animatex-train submit`` and the sbatch scripts, without a Slurm installation (fake sbatch / srun / scontrol)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from animatex_train.cli.submit import main as submit_main
from slurm.harness import REPO

RECIPE = "recipes/debug/tiny_cpu.yaml"
# Records argv and the variables the scripts read, prints a job id like `sbatch --parsable`.
FAKE = """#!/usr/bin/env python3
import json, os, sys
with open({log!r}, "a") as f:
    f.write(json.dumps({{"argv": sys.argv, "env": {{k: os.environ.get(k) for k in {keys!r}}}}}) + "\\n")
print({output!r})
"""
KEYS = [
    "RECIPE",
    "CLUSTER_OVERLAY",
    "RUN_DIR",
    "PREPARE_CONFIG",
    "CKPT",
    "ANIMATEX_TRAIN",
    "MASTER_ADDR",
    "MASTER_PORT",
]


def fake(bin_dir: Path, name: str, log: Path, output: str = "") -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / name).write_text(FAKE.format(log=str(log), keys=KEYS, output=output))
    (bin_dir / name).chmod(0o755)


def calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def test_dry_run_prints_the_filled_sbatch_command(in_repo, capsys):
    code = submit_main(
        [
            "train",
            "--recipe",
            RECIPE,
            "--overlay",
            RECIPE,
            "--nodes",
            "4",
            "--gpus-per-node",
            "8",
            "--time",
            "2-00:00:00",
            "--partition",
            "gpu",
            "--account",
            "proj",
            "--signal_lead",
            "600",
            "--run-dir",
            "runs/a",
            "--dry-run",
            "--",
            "--trainer.max_steps=10",
        ]
    )
    assert code == 0
    argv = shlex.split(capsys.readouterr().out)
    assert argv[0] == "env" and f"RECIPE={RECIPE}" in argv and f"CLUSTER_OVERLAY={RECIPE}" in argv
    assert "RUN_DIR=runs/a" in argv
    for flag in (
        "--nodes=4",
        "--gpus-per-node=8",
        "--ntasks-per-node=8",
        "--time=2-00:00:00",
        "--partition=gpu",
        "--account=proj",
        "--signal=USR1@600",
        "--export=ALL",
    ):
        assert flag in argv, argv
    assert argv[-2:] == [str(REPO / "slurm" / "train.sbatch"), "--trainer.max_steps=10"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["train"], "--recipe is required"),
        (["train", "--recipe", "missing.yaml"], "no such file"),
        (["train", "--recipe", RECIPE, "--partition", "gpu;reboot"], "letters, digits"),
        (["train", "--recipe", RECIPE, "--time", "forever"], "--time"),
        (["train", "--recipe", RECIPE, "--time", "5:00", "--signal_lead", "300"], "not shorter"),
        (["train", "--recipe", RECIPE, "--gpus_per_node", "0"], "--ntasks_per_node"),
        (["eval", "--recipe", RECIPE], "--run_dir"),
        (["prepare"], "--config is required"),
    ],
)
def test_bad_flags_are_refused_before_sbatch_runs(in_repo, capsys, args, message):
    assert submit_main([*args, "--dry-run"]) == 2
    assert message in capsys.readouterr().err


def test_prepare_submits_an_array_then_a_merge_that_depends_on_it(in_repo, tmp_path, monkeypatch, capsys):
    log = tmp_path / "sbatch.log"
    fake(tmp_path / "bin", "sbatch", log, output="4242;cluster")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    code = submit_main(
        [
            "prepare",
            "--config",
            RECIPE,
            "--tasks",
            "8",
            "--partition",
            "cpu",
            "--log-dir",
            str(tmp_path / "logs"),
            "--",
            "--stages",
            "shards",
        ]
    )
    assert code == 0 and capsys.readouterr().out == "submitted prepare: 4242\nsubmitted prepare: 4242\n"
    array, merge = calls(log)
    assert "--array=0-7" in array["argv"] and array["env"]["PREPARE_CONFIG"] == RECIPE
    assert array["argv"][-2:] == ["--stages", "shards"]
    assert "--dependency=afterok:4242" in merge["argv"] and "--partition=cpu" in merge["argv"]
    assert merge["argv"][-2:] == ["--stages", "merge"] and "--gpus-per-node=0" in merge["argv"]
    assert (tmp_path / "logs").is_dir()


def test_a_failing_sbatch_is_reported(in_repo, tmp_path, monkeypatch, capsys):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: invalid partition' >&2\nexit 1\n")
    (tmp_path / "bin" / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert submit_main(["train", "--recipe", RECIPE, "--log-dir", str(tmp_path / "logs")]) == 1
    assert "invalid partition" in capsys.readouterr().err


def run_script(tmp_path: Path, script: str, env: dict[str, str], args: list[str]) -> subprocess.CompletedProcess:
    """Run a slurm/*.sbatch with fake srun/scontrol, as Slurm would on the first node of job 77."""
    log = tmp_path / "srun.log"
    fake(tmp_path / "bin", "srun", log)
    (tmp_path / "bin" / "scontrol").write_text("#!/bin/sh\necho node-a\necho node-b\n")  # show hostnames
    (tmp_path / "bin" / "scontrol").chmod(0o755)
    slurm = {
        "SLURM_JOB_ID": "77",
        "SLURM_JOB_NAME": "animatex-train",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NTASKS_PER_NODE": "4",
        "SLURM_JOB_NODELIST": "node-[a-b]",
    }
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "RUN_DIR", "RECIPE"))}
    path = f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(
        ["bash", str(REPO / "slurm" / script), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**base, **slurm, **env, "PATH": path},
        timeout=60,
    )


def test_train_sbatch_runs_fit_on_every_rank_with_the_allocation_and_passes_arguments_through(tmp_path):
    result = run_script(
        tmp_path,
        "train.sbatch",
        {"RECIPE": "r.yaml", "CLUSTER_OVERLAY": "c.yaml", "ANIMATEX_TRAIN": "py -m animatex_train"},
        ["--x=1", "a b"],
    )
    assert result.returncode == 0, result.stderr
    (call,) = calls(tmp_path / "srun.log")
    assert call["argv"][1:] == [
        "--kill-on-bad-exit=1",
        "py",
        "-m",
        "animatex_train",
        "fit",
        "--config",
        "r.yaml",
        "--config",
        "c.yaml",
        "--trainer.num_nodes=2",
        "--trainer.devices=4",
        "--trainer.default_root_dir=runs/animatex-train-77",
        "--x=1",
        "a b",
    ]
    assert call["env"]["MASTER_ADDR"] == "node-a" and call["env"]["MASTER_PORT"] == "20077"  # first node, job port


def test_train_sbatch_needs_a_recipe(tmp_path):
    result = run_script(tmp_path, "train.sbatch", {}, [])
    assert result.returncode != 0 and "set RECIPE" in result.stderr


def test_eval_sbatch_evaluates_the_newest_complete_checkpoint(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step-000000040\n")
    result = run_script(tmp_path, "eval.sbatch", {"RECIPE": "r.yaml", "RUN_DIR": "run"}, [])
    assert result.returncode == 0, result.stderr
    argv = calls(tmp_path / "srun.log")[0]["argv"]
    assert "validate" in argv and "--ckpt_path=run/checkpoints/step-000000040/state.ckpt" in argv
    assert "--trainer.default_root_dir=run/eval-77" in argv


@pytest.mark.parametrize("script", ["train.sbatch", "prepare.sbatch", "eval.sbatch"])
def test_scripts_are_valid_bash(script):
    assert subprocess.run(["bash", "-n", str(REPO / "slurm" / script)], capture_output=True).returncode == 0
