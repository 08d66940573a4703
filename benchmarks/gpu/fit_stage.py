"""The real path of the GPU benchmark: data made on the machine, then ``animatex-train fit`` as a user runs it.

1. ``dataset``: synthetic character videos -> ``prepare`` (tiny random-weight encoders, as wide as the paper's)
   -> shards -> EPI anchor pool, all through the CLI (started in the background while the GPU benchmarks run);
2. ``fit``: the paper recipe plus the one-GPU ZeRO-2 bf16 overlay on those shards, N steps, validation (and
   its sample clip) once at the end, a checkpoint; metrics read back from Lightning's CSV logger;
3. ``resume``: the same command with a few more steps: it must resume from that checkpoint by itself.

The dry run does the same with the tiny CPU recipe and tiny clips.
"""

from __future__ import annotations

import csv
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks" / "gpu"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "animatex_train", *args]


def dataset_commands(root: Path, dry_run: bool) -> list[list[str]]:
    """The three data commands, in order (each skipped by the caller when its output exists)."""
    kind = "dry_run" if dry_run else "paper"
    videos, data = root / "videos", root / "data"
    return [
        cli("synth", "--out", str(videos), "--config", str(BENCH / f"dataset_{kind}.yaml")),
        cli(
            "prepare",
            "--config",
            str(BENCH / f"prepare_{kind}.yaml"),
            "--videos",
            str(videos),
            "--metadata",
            str(videos / "metadata.jsonl"),
            "--output_dir",
            str(data),
            "--progress",
            "false",
            "--encoders.num_threads",
            "1" if dry_run else "8",
        ),
        cli("anchor-pool", "--shards", str(data), "--output", str(data / "anchors.npy"), "--num_anchors", "16"),
    ]


def start_dataset(root: Path, dry_run: bool, log_path: Path) -> subprocess.Popen:
    """Run the data commands one after another in a background shell; its exit code says whether all worked."""
    root.mkdir(parents=True, exist_ok=True)
    script = " && ".join(" ".join(_quote(a) for a in command) for command in dataset_commands(root, dry_run))
    env = {**os.environ, "OMP_NUM_THREADS": "1" if dry_run else "8"}  # beside the benchmark, never over the cores
    return subprocess.Popen(["bash", "-c", script], stdout=log_path.open("w"), stderr=subprocess.STDOUT, env=env)


def _quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\\''") + "'"


def fit_command(
    root: Path, run_dir: Path, steps: int, dry_run: bool, peak_tflops: float | None, extra: list[str]
) -> list[str]:
    data = root / "data"
    manifest = data / "manifest.json"
    log_every = 2 if dry_run else 5
    if dry_run:
        configs = ["--config", str(REPO / "recipes/debug/tiny_cpu.yaml")]
        model = ["--data.num_workers", "1", "--model.sampler.num_steps", "2"]
    else:
        configs = [
            "--config",
            str(REPO / "recipes/train/animatex_paper.yaml"),
            "--config",
            str(REPO / "recipes/cluster/gpu1_zero2.yaml"),
        ]
        model = [
            "--model.init.checkpoint",
            "null",
            "--model.vae.checkpoint",
            "null",
            "--model.vae.tiny",
            "true",
            "--model.clip.checkpoint",
            "null",
            "--model.clip.tiny",
            "true",
            "--model.clip.tiny_embed_dim",
            "1024",
            "--model.denoiser.ipi.keypoint_row_order",
            "per_sample",
            "--trainer.accumulate_grad_batches",
            "1",
            "--model.sampler.num_steps",
            "10",
        ]
    return cli(
        "fit",
        *configs,
        *model,
        "--data.train",
        f"[{{manifest: {manifest}}}]",
        "--data.val",
        f"[{{manifest: {manifest}, split: val}}]",
        "--data.anchor_pool",
        str(data / "anchors.npy"),
        "--model.empty_prompt_cache",
        str(data / "zero_y.safetensors"),
        "--trainer.default_root_dir",
        str(run_dir),
        "--trainer.max_steps",
        str(steps),
        "--trainer.val_check_interval",
        str(steps),
        "--trainer.limit_val_batches",
        "1",
        "--trainer.log_every_n_steps",
        str(log_every),
        "--throughput.log_every_n_steps",
        str(log_every),
        *(["--throughput.peak_tflops", f"{peak_tflops:.1f}"] if peak_tflops else []),
        "--checkpoint.every_n_steps",
        str(steps),
        "--tracking.mode",
        "disabled",
        "--trainer.logger",
        "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir",
        str(run_dir),
        "--trainer.logger.name",
        "csv",
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    )


def run_logged(command: list[str], log_path: Path, timeout_s: float) -> dict:
    """Run ``command`` with its output in ``log_path``; exit code, seconds, and whether it timed out."""
    start = time.perf_counter()
    with log_path.open("a") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        try:
            code = subprocess.run(
                command, stdout=log, stderr=subprocess.STDOUT, timeout=max(1.0, timeout_s), cwd=REPO
            ).returncode
            timed_out = False
        except subprocess.TimeoutExpired:
            code, timed_out = None, True
    return {"returncode": code, "seconds": time.perf_counter() - start, "timed_out": timed_out}


def read_metrics(run_dir: Path) -> list[dict]:
    """Rows of Lightning's ``metrics.csv`` (every version of the run), numbers as floats, blanks dropped."""
    rows = []
    for path in sorted(run_dir.glob("csv/version_*/metrics.csv")):
        with path.open() as f:
            for row in csv.DictReader(f):
                rows.append({k: float(v) for k, v in row.items() if v not in ("", None)})
    return rows


def summarise_fit(run_dir: Path, log_path: Path) -> dict:
    """The figures of the fit: the last two throughput intervals (the first holds start-up), memory, losses."""
    rows = read_metrics(run_dir)
    perf = [r for r in rows if "perf/samples_per_s" in r]
    steady = perf[-2:] if len(perf) > 2 else perf[-1:]

    def mean(key: str) -> float | None:
        values = [r[key] for r in steady if key in r and not math.isnan(r[key])]
        return sum(values) / len(values) if values else None

    losses = [(int(r["step"]), r["train/loss"]) for r in rows if "train/loss" in r]
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*") if (p / "COMPLETE").exists())
    samples = sorted(p.name for p in (run_dir / "samples").glob("*.mp4")) if (run_dir / "samples").exists() else []
    return {
        "samples_per_s": mean("perf/samples_per_s"),
        "mfu": mean("perf/mfu"),
        "tflops_per_device": mean("perf/tflops_per_device"),
        "data_wait_fraction": mean("perf/data_wait_fraction"),
        "peak_memory_gib": max((r.get("perf/peak_memory_gib", 0.0) for r in perf), default=None),
        "intervals": perf,
        "losses": losses[-10:],
        "val_loss": next((r["val/loss"] for r in rows if "val/loss" in r), None),
        "checkpoints": checkpoints,
        "sample_videos": samples,
        "resumed_from": re.findall(r"resuming from (\S+)", text),
        "errors": [line for line in text.splitlines() if re.search(r"Error|Traceback", line)][-8:],
    }
