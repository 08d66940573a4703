"""Crash safety of checkpoints (docs/reliability.md §4): SIGKILL during a write, and damaged checkpoints.

* 20 SIGKILLs at random moments of a loop that commits through the real commit functions (``commit_loop.py``):
  resume never picks an incomplete checkpoint and always picks the newest complete one.
* A real Lightning run killed inside ``CrashSafeCheckpoint.save``, then the same command again: it resumes
  from the previous checkpoint and finishes.
* Truncated, bit-flipped and missing files, a manifest or completion marker that does not match, an empty or
  garbage ``latest``: skipped with a warning naming the folder and the failed check; the previous complete
  checkpoint is used, and no tensor is loaded to find that out.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from support.tiny_dataset import REPO_ROOT, build_tiny_dataset, fit_args, fit_env, run_fit

from animatex_train.training.checkpoint import (
    COMPLETE,
    LATEST,
    MANIFEST,
    STATE,
    CheckpointIntegrityError,
    commit_checkpoint,
    find_resume_checkpoint,
    step_dir_name,
    verify_checkpoint,
)

HERE = Path(__file__).resolve().parent


def _step(path: Path) -> int:
    return int(path.name.split("-")[1].split(".")[0])


def _complete_dirs(root: Path) -> list[Path]:
    good = []
    for d in root.iterdir():
        if d.name.startswith("step-") and not d.name.endswith(".tmp"):
            try:
                verify_checkpoint(d)
                good.append(d)
            except CheckpointIntegrityError:
                pass
    return good


# 20 kills in every run of the suite; the 50-kill sweep of docs/reliability.md G4 under `make test-faults`.
@pytest.mark.parametrize("count", [20, pytest.param(50, marks=[pytest.mark.slow, pytest.mark.fault_sweep])])
def test_sigkill_during_commits_never_resumes_an_incomplete_checkpoint(tmp_path, count):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, str(HERE / "commit_loop.py"), str(tmp_path), str(count), str(count % 13)],
        cwd=REPO_ROOT,
        env=env,
        check=True,
        timeout=count * 9,
    )
    trials = json.loads((tmp_path / "trials.json").read_text())
    assert len(trials) == count
    interrupted = 0
    for trial in trials:
        root = Path(trial["root"])
        journal = root / "journal.txt"
        committed = [int(s) for s in journal.read_text().split()] if journal.exists() else []
        interrupted += any(d.name.endswith(".tmp") for d in root.iterdir())
        resume = find_resume_checkpoint(root)
        complete = _complete_dirs(root)
        if not complete:
            assert resume is None and not committed, trial
            continue
        assert resume is not None, trial
        verify_checkpoint(resume.parent)  # complete and intact
        assert resume.name == STATE and not resume.parent.name.endswith(".tmp")
        assert _step(resume.parent) == max(_step(d) for d in complete), trial  # the newest complete one
        if committed:  # at least as new as the last commit that returned (a kill may land just after a rename)
            assert _step(resume.parent) >= committed[-1], trial
    # the kills really landed during writes, not only between commits
    assert interrupted >= count // 4, f"only {interrupted} of {count} kills interrupted a save"


def _commit(root: Path, step: int, sharded: bool) -> Path:
    tmp = root / (step_dir_name(step) + ".tmp")
    if sharded:  # a DeepSpeed state.ckpt: a folder with one shard per rank
        for rank in range(2):
            shard = tmp / STATE / "checkpoint" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
            shard.parent.mkdir(parents=True, exist_ok=True)
            shard.write_bytes(os.urandom(4096))
    else:
        tmp.mkdir(parents=True)
        (tmp / STATE).write_bytes(os.urandom(8192))
    commit_checkpoint(tmp, root / step_dir_name(step), step, keep_last=3)
    return root / step_dir_name(step)


def _truncate(d: Path) -> None:
    path = d / STATE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip(d: Path) -> None:
    path = d / STATE / "checkpoint" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _delete_shard(d: Path) -> None:
    (d / STATE / "checkpoint" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()


def _edit_manifest(d: Path) -> None:
    manifest = json.loads((d / MANIFEST).read_text())
    manifest["step"] += 1  # still valid JSON, but not what COMPLETE vouches for
    (d / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def _edit_complete(d: Path) -> None:
    (d / COMPLETE).write_text("0" * 64 + "\n")


CASES = {
    "truncated": (False, _truncate, "bytes, MANIFEST.json says"),
    "flipped_byte": (True, _flip, "fails its sha256 check"),
    "deleted_rank_shard": (True, _delete_shard, "rank_1_mp_rank_00_optim_states.pt listed in MANIFEST.json is missing"),
    "manifest_edited": (False, _edit_manifest, "does not match MANIFEST.json"),
    "complete_mismatch": (True, _edit_complete, "does not match MANIFEST.json"),
    "complete_missing": (False, lambda d: (d / COMPLETE).unlink(), "no COMPLETE marker"),
}


@pytest.fixture
def no_tensor_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("find_resume_checkpoint loaded a tensor file")

    monkeypatch.setattr(torch, "load", refuse)


@pytest.mark.parametrize("case", sorted(CASES))
def test_damaged_checkpoint_is_skipped_with_a_warning(tmp_path, caplog, case, no_tensor_loading):
    sharded, damage, check = CASES[case]
    previous = _commit(tmp_path, 10, sharded)
    newest = _commit(tmp_path, 20, sharded)
    damage(newest)
    with caplog.at_level(logging.WARNING, logger="animatex_train.training.checkpoint"):
        resume = find_resume_checkpoint(tmp_path)
    assert resume == previous / STATE
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(newest) in w and check in w for w in warnings), warnings


@pytest.mark.parametrize("latest", ["", "garbage\x00\xff\n", "step-000000099\n", "../../etc\n"])
def test_empty_or_garbage_latest_does_not_change_the_choice(tmp_path, latest, no_tensor_loading):
    _commit(tmp_path, 10, False)
    newest = _commit(tmp_path, 20, True)
    (tmp_path / LATEST).write_text(latest)
    assert find_resume_checkpoint(tmp_path) == newest / STATE  # found by scanning and verifying, never by `latest`


def test_only_damaged_checkpoints_means_a_fresh_start(tmp_path, caplog):
    _truncate(_commit(tmp_path, 10, False))
    (tmp_path / "step-000000020.tmp").mkdir()
    with caplog.at_level(logging.WARNING, logger="animatex_train.training.checkpoint"):
        assert find_resume_checkpoint(tmp_path) is None
    assert any("step-000000020.tmp" in r.getMessage() for r in caplog.records)


def test_lightning_run_killed_inside_checkpoint_save_resumes_on_rerun(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    build_tiny_dataset(data)
    base = [*fit_args(data, run, max_steps=4, every_n_steps=2), "--trainer.devices", "1"]

    def probe(name: str, pause: int) -> str:
        return (
            f"--trainer.callbacks+={{class_path: strategy_probe.RunProbe, init_args: {{out_dir: {run / name}, "
            f"pause_in_save_at_step: {pause}}}}}"
        )

    proc = subprocess.Popen(
        [sys.executable, "-m", "animatex_train", *base, probe("first", 4)],
        cwd=REPO_ROOT,
        env=fit_env(HERE),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    marker, deadline = run / "first" / "paused-in-save", time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # inside CrashSafeCheckpoint.save of step 4: step-4.tmp exists
    output = proc.communicate()[0]
    assert marker.exists(), output[-4000:]
    checkpoints = run / "checkpoints"
    assert (checkpoints / "step-000000004.tmp").is_dir() and not (checkpoints / "step-000000004").exists()
    assert find_resume_checkpoint(checkpoints) == checkpoints / "step-000000002" / STATE

    output = run_fit([*base, probe("second", -1)], fit_env(HERE), timeout_s=240)  # the same command again
    assert "ignoring incomplete checkpoint" in output and "step-000000004.tmp" in output
    resumed = json.loads((run / "second" / "losses-rank0.json").read_text())
    assert [step for step, _ in resumed] == [3, 4]  # continued after step 2, not from scratch
    verify_checkpoint(checkpoints / "step-000000004")
    assert not (checkpoints / "step-000000004.tmp").exists()
