"""Kill -9 mid-epoch, rerun the same command: exactly the same samples and bitwise the same losses.

2 CPU processes (DDP, gloo) x 2 loader workers, the tiny recipe, a checkpoint every 3 steps. The
sample ledger records (step, rank, sample keys, loss as float.hex) for every step.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from support.shards import write_shards

from animatex_train.data.format.manifest import DatasetManifest, ShardEntry
from animatex_train.training.checkpoint import find_resume_checkpoint
from animatex_train.training.ledger import read_ledger

REPO = Path(__file__).resolve().parents[2]
STEPS = 10


def build_dataset(root: Path) -> Path:
    """8 training shards x 4 clips (32 samples = 4 steps per epoch at 2 ranks x 2 workers x batch 2)."""
    import hashlib

    entries = []
    for split, num_shards, prefix in (("train", 8, "tr"), ("val", 1, "va")):
        for info in write_shards(root / split, num_shards, 4, frames=12, size=(64, 64), clip_dim=64, prefix=prefix):
            path = Path(info.url)
            entries.append(
                ShardEntry(
                    path=path.relative_to(root).as_posix(),
                    split=split,
                    num_samples=len(info.keys),
                    num_frames=12 * len(info.keys),
                    size_bytes=path.stat().st_size,
                    sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                    keys=list(info.keys),
                    source_videos=[k.rsplit("-c", 1)[0] for k in info.keys],
                    resolutions={"64x64": len(info.keys)},
                )
            )
    manifest = DatasetManifest(
        name="resume-test",
        schema_version=1,
        resolutions_px=[(64, 64)],
        fps=8.0,
        num_frames_per_clip=12,
        encoders={},
        shards=entries,
    )
    manifest.save(root / "manifest.json")
    return root / "manifest.json"


def fit_command(manifest: Path, run_dir: Path, devices: int, workers: int = 2, steps: int = STEPS) -> list[str]:
    return [
        sys.executable,
        "-m",
        "animatex_train",
        "fit",
        "--config",
        str(REPO / "recipes/debug/tiny_cpu.yaml"),
        f"--data.train=[{{manifest: {manifest}}}]",
        "--data.val=null",
        "--data.anchor_pool=null",
        "--data.epi.apply_prob=0",
        f"--data.num_workers={workers}",
        "--data.batch_size=2",
        "--model.empty_prompt_cache=null",
        "--model.validation.sample_clips=false",
        f"--trainer.devices={devices}",
        f"--trainer.strategy={'ddp' if devices > 1 else 'auto'}",
        f"--trainer.max_steps={steps}",
        "--trainer.limit_val_batches=0",
        "--trainer.val_check_interval=null",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={run_dir}",
        "--checkpoint.every_n_steps=3",
        "--trainer.callbacks+=animatex_train.training.ledger.SampleLedger",
    ]


def run(
    cmd: list[str],
    kill_after_step: int | None = None,
    ledger: Path | None = None,
    timeout: float = 240,
    kill_when_checkpoint: Path | None = None,
):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"timed out: {' '.join(cmd)}\n{proc.stdout.read()[-3000:]}")
        if kill_when_checkpoint is not None and kill_when_checkpoint.is_dir():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None
        if kill_after_step is not None and ledger is not None and ledger.is_dir():
            steps = [r["step"] for r in read_ledger(ledger)]
            if steps.count(kill_after_step) >= 2:  # both ranks finished that step: kill everything, now
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return None
        time.sleep(0.05)
    output = proc.stdout.read()
    assert proc.returncode == 0, output[-4000:]
    return output


def by_step(records: list[dict]) -> dict[tuple[int, int], dict]:
    return {(r["step"], r["rank"]): r for r in records}


def last_session(records: list[dict]) -> list[dict]:
    """The records of each rank's most recent process (each rank process has its own session id)."""
    latest = {r["rank"]: r["session"] for r in records}
    return [r for r in records if r["session"] == latest[r["rank"]]]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return build_dataset(tmp_path_factory.mktemp("resume-data"))


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory) -> list[dict]:
    run_dir = tmp_path_factory.mktemp("reference")
    run(fit_command(dataset, run_dir, devices=2))
    return read_ledger(run_dir / "ledger")


def test_kill_and_rerun_reproduces_the_uninterrupted_run_bitwise(dataset, reference, tmp_path):
    run_dir = tmp_path / "run"
    command = fit_command(dataset, run_dir, devices=2)
    run(command, kill_after_step=5, ledger=run_dir / "ledger")  # mid-epoch 2, after the step-3 checkpoint
    checkpoint = find_resume_checkpoint(run_dir / "checkpoints")
    assert checkpoint is not None and checkpoint.parent.name == "step-000000003"
    run(command)  # the same command resumes by itself
    resumed = by_step(last_session(read_ledger(run_dir / "ledger")))
    expected = by_step(reference)
    assert sorted(resumed) == [(s, r) for s in range(4, STEPS + 1) for r in range(2)]
    for key in sorted(resumed):
        assert resumed[key]["keys"] == expected[key]["keys"], f"step/rank {key}: different samples"
        assert resumed[key]["loss_hex"] == expected[key]["loss_hex"], f"step/rank {key}: different loss"


def test_resume_on_another_world_size_neither_repeats_nor_loses(dataset, tmp_path):
    run_dir = tmp_path / "run"
    run(fit_command(dataset, run_dir, devices=2), kill_when_checkpoint=run_dir / "checkpoints" / "step-000000003")
    checkpoint = find_resume_checkpoint(run_dir / "checkpoints")
    assert checkpoint is not None and checkpoint.parent.name == "step-000000003"  # mid-epoch 0 (4 steps/epoch)
    # resume on 1 process x 1 worker: the 20 samples left of epoch 0 take 10 more steps
    run(fit_command(dataset, run_dir, devices=1, workers=1, steps=13))
    records = read_ledger(run_dir / "ledger")
    resumed_session = max(records, key=lambda r: r["step"])["session"]
    consumed = [k for r in records if r["session"] != resumed_session and r["step"] <= 3 for k in r["keys"]]
    rest_of_epoch = [k for r in records if r["session"] == resumed_session and r["epoch"] == 0 for k in r["keys"]]
    seen = Counter(consumed + rest_of_epoch)
    assert len(consumed) == 3 * 2 * 2  # 3 steps x 2 ranks x batch 2
    assert max(seen.values()) == 1, "a sample was repeated within the epoch after the world-size change"
    assert len(seen) == 32, f"{32 - len(seen)} samples of the epoch were never seen"
