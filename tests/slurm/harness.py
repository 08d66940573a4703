"""Helpers of the preemption, tracking and Slurm tests: tiny multi-process runs, a fake ``scontrol``, W&B files.

Runs are real ``python -m animatex_train fit`` processes on the tiny recipe, at 32x32 pixels and 4 frames
(a step takes ~0.3 s on one core). ``probe.StepProbe`` (this folder, put on ``PYTHONPATH``) reports each
rank's progress and every checkpoint save to ``<run>/probe/``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from support.tiny_dataset import TINY_RECIPE, build_tiny_dataset

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def tiny_dataset(root: Path) -> Path:
    """32x32 clips of 6 frames (the runs read 4): the cheapest data the tiny denoiser accepts."""
    return build_tiny_dataset(root, num_train_shards=4, per_shard=4, frames=6, size=(32, 32))


def fit_args(manifest: Path, run_dir: Path, max_steps: int, validate: bool = False, extra: list[str] = ()) -> list[str]:
    """Arguments after ``animatex-train``: a tiny fit with W&B offline, the probe, no progress bar."""
    return ["fit", "--config", str(TINY_RECIPE), *fit_overrides(manifest, run_dir, max_steps, validate, extra)]


def fit_overrides(
    manifest: Path, run_dir: Path, max_steps: int, validate: bool = False, extra: list[str] = ()
) -> list[str]:
    """The arguments after ``fit --config <tiny recipe>`` (what ``slurm/train.sbatch`` passes through)."""
    args = [
        f"--data.train=[{{manifest: {manifest}}}]",
        "--data.anchor_pool=null",
        "--data.epi.apply_prob=0",
        "--data.num_frames=4",
        "--model.empty_prompt_cache=null",
        "--model.sampler.num_steps=2",
        f"--trainer.default_root_dir={run_dir}",
        f"--trainer.max_steps={max_steps}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.log_every_n_steps=1",
        "--throughput.log_every_n_steps=2",
        "--checkpoint.every_n_steps=0",
        "--tracking.mode=offline",
        "--trainer.callbacks+=probe.StepProbe",
    ]
    if validate:
        args += [f"--data.val=[{{manifest: {manifest}, split: val}}]", f"--trainer.val_check_interval={max_steps}"]
    else:
        args += ["--data.val=null", "--trainer.limit_val_batches=0"]
    return [*args, *extra]


def run_env(**extra: str) -> dict[str, str]:
    """The environment of a run: single-threaded, W&B offline, the probe importable, no inherited Slurm job."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env.update(
        OMP_NUM_THREADS="1",
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        PYTHONHASHSEED="0",
        PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")])),
    )
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_fake_scontrol(bin_dir: Path, log: Path) -> Path:
    """An ``scontrol`` that only appends its arguments (one call per line) to ``log``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "scontrol"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log}"\n')
    script.chmod(0o755)
    return script


def scontrol_calls(log: Path) -> list[list[str]]:
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


class RankGroup:
    """``world`` rank processes started the way ``srun`` starts them (``SLURM_PROCID`` etc.), on this machine."""

    def __init__(self, args: list[str], log_dir: Path, env: dict[str, str], world: int = 2):
        port = str(free_port())
        log_dir.mkdir(parents=True, exist_ok=True)
        self.logs = [log_dir / f"rank{r}.log" for r in range(world)]
        self.procs = []
        for rank in range(world):
            rank_env = {
                **env,
                "SLURM_NTASKS": str(world),
                "SLURM_NTASKS_PER_NODE": str(world),
                "SLURM_NNODES": "1",
                "SLURM_PROCID": str(rank),
                "SLURM_LOCALID": str(rank),
                "SLURM_NODEID": "0",
                "SLURM_JOB_NAME": "animatex-test",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
            }
            with self.logs[rank].open("w") as out:
                self.procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "animatex_train",
                            *args,
                            f"--trainer.devices={world}",
                            "--trainer.strategy=ddp",
                            "--trainer.accelerator=cpu",
                        ],
                        cwd=REPO,
                        env=rank_env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def output(self, rank: int) -> str:
        return self.logs[rank].read_text()

    def wait(self, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"ranks still running after {timeout} s:\n{self.output(0)[-3000:]}") from None
        return [p.returncode for p in self.procs]

    def kill(self) -> None:
        """SIGKILL our rank processes and their children (each rank leads its own session)."""
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def probe_steps(run_dir: Path, rank: int) -> list[int]:
    path = run_dir / "probe" / f"rank{rank}.jsonl"
    if not path.exists():
        return []
    return [r["step"] for r in map(json.loads, path.read_text().splitlines()) if r["event"] == "step"]


def probe_events(run_dir: Path, event: str, rank: int | None = None) -> list[dict]:
    """The probe's records of ``event`` (``start``, ``step``, ``save``): one rank's, or every rank's in rank order."""
    out = []
    for path in sorted((run_dir / "probe").glob("rank*.jsonl")):
        if rank is None or path.name == f"rank{rank}.jsonl":
            out += [r for r in map(json.loads, path.read_text().splitlines()) if r["event"] == event]
    return out


def wait_for_step(run_dir: Path, ranks: int, step: int, group: RankGroup | None = None, timeout: float = 120) -> int:
    """Wait until every rank finished optimizer step ``step``; returns the highest step reported so far."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reached = [max(probe_steps(run_dir, r), default=-1) for r in range(ranks)]
        if min(reached) >= step:
            return max(reached)
        if group is not None and any(p.poll() is not None for p in group.procs):
            raise AssertionError(f"a rank exited before step {step}:\n{group.output(0)[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached within {timeout} s")


def wandb_records(path: Path):
    """The records of a ``.wandb`` file (W&B's LevelDB-style log of protobuf ``Record`` s)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, partial = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768  # records never straddle a 32 KiB block header
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zero padding up to the end of the block
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        partial = chunk if kind in (1, 2) else partial + chunk
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(partial)
            yield record


def wandb_history(path: Path) -> list[dict[str, object]]:
    rows = []
    for record in wandb_records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
    return rows


def wandb_config(path: Path) -> dict[str, object]:
    config = {}
    for record in wandb_records(path):
        if record.WhichOneof("record_type") == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
    return config


def offline_runs(run_dir: Path) -> list[Path]:
    """The ``.wandb`` files of the offline W&B runs under ``run_dir``, oldest first."""
    return sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
