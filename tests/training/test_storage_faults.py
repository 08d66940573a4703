"""Disk full during a checkpoint save (docs/reliability.md F10): ``training/checkpoint_storage.py``.

Two DDP ranks (gloo); rank 0's disk "fills up" 64 KiB into the step-4 save (``storage_faults.FullDisk``):

* ``checkpoint.on_save_error: stop``: both ranks stop with the same one-line error naming the path, the bytes
  needed and the bytes free; no ``step-4`` and no ``step-4.tmp`` are left; ``step-2`` is intact, and the same
  command (disk freed) resumes from it and finishes.
* ``continue``: both ranks log the same warning and train on; the next save (step 6) commits.
"""

from __future__ import annotations

import re

import pytest
from support.tiny_dataset import PROBE_PATH, build_tiny_dataset, fit_args, fit_env, run_fit

from animatex_train.training.checkpoint import find_resume_checkpoint, step_dir_name, verify_checkpoint
from animatex_train.training.checkpoint_storage import space_shortfall

FAULT = "--trainer.callbacks+={class_path: storage_faults.FullDisk, init_args: {at_step: 4, rank: 0}}"


def _args(root, policy: str, fault: bool = True) -> list[str]:
    build_tiny_dataset(root / "data")
    args = [
        *fit_args(root / "data", root / "run", max_steps=6, every_n_steps=2),
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--checkpoint.on_save_error",
        policy,
    ]
    return [*args, FAULT] if fault else args


def _steps(root) -> list[str]:
    return sorted(p.name for p in (root / "run" / "checkpoints").iterdir() if p.name.startswith("step-"))


def test_disk_full_stops_every_rank_cleanly_and_the_rerun_resumes(tmp_path):
    with pytest.raises(AssertionError, match="exit code") as failure:
        run_fit(_args(tmp_path, "stop"), fit_env(PROBE_PATH), timeout_s=600)
    output = str(failure.value)
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert errors, output[-4000:]
    texts = {re.sub(r"^error: (\[rank \d\] )?", "", line) for line in errors}
    assert len(texts) == 1, errors  # every rank says the same
    text = texts.pop()
    assert "step 4 failed on rank(s) [0]" in text and "No space left on device" in text
    assert re.search(r"needs about [\d,]+ bytes, [\d,]+ bytes are free", text), text
    assert f"{step_dir_name(2)} is intact" in text and "Traceback" not in output
    assert _steps(tmp_path) == [step_dir_name(2)]  # nothing committed, the temporary folder removed
    verify_checkpoint(tmp_path / "run" / "checkpoints" / step_dir_name(2))

    output = run_fit(_args(tmp_path, "stop", fault=False), fit_env(PROBE_PATH), timeout_s=600)
    assert find_resume_checkpoint(tmp_path / "run" / "checkpoints").parent.name == step_dir_name(6)


def test_disk_full_with_policy_continue_trains_on_and_saves_next_time(tmp_path):
    output = run_fit(_args(tmp_path, "continue"), fit_env(PROBE_PATH), timeout_s=600)
    warnings = [line for line in output.splitlines() if "training goes on (checkpoint.on_save_error: continue)" in line]
    assert sorted(re.search(r"rank (\d)", w).group(1) for w in warnings) == ["0", "1"], output[-4000:]
    assert len({w.split(": ", 1)[1] if ": " in w else w for w in warnings}) >= 1
    assert _steps(tmp_path) == [step_dir_name(2), step_dir_name(6)]
    verify_checkpoint(tmp_path / "run" / "checkpoints" / step_dir_name(6))


def test_free_space_shortfall_is_reported_before_a_save(tmp_path):
    assert space_shortfall(tmp_path, last_bytes=0, margin=1.5) is None  # nothing known yet
    assert space_shortfall(tmp_path, last_bytes=1, margin=1.5) is None
    needed, free = space_shortfall(tmp_path / "not" / "yet", last_bytes=1 << 60, margin=1.5)
    assert needed == int((1 << 60) * 1.5) and 0 <= free < needed
