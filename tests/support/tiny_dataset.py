"""A tiny prepared dataset (shards + ``manifest.json``) and the ``fit`` arguments that train on it.

``build_tiny_dataset(root)`` writes synthetic shards through the real shard schema and a manifest that
``VideoDataModule`` accepts; ``fit_args(root, run_dir)`` turns ``recipes/debug/tiny_cpu.yaml`` into a
run on it (no EPI anchor pool, no cached empty prompt, no logger). Both are cheap (well under a second).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from animatex_train.data.format.manifest import DatasetManifest, ShardEntry
from animatex_train.data.format.schema import SCHEMA_VERSION
from support.shards import write_shards

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_RECIPE = REPO_ROOT / "recipes" / "debug" / "tiny_cpu.yaml"


def _entries(infos, root: Path, split: str) -> list[ShardEntry]:
    entries = []
    for info in infos:
        path = Path(info.url)
        entries.append(
            ShardEntry(
                path=path.relative_to(root).as_posix(),
                split=split,
                num_samples=len(info.keys),
                num_frames=sum(info.num_frames),
                size_bytes=path.stat().st_size,
                sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                keys=list(info.keys),
                source_videos=[k.rsplit("-c", 1)[0] for k in info.keys],
                resolutions={f"{info.height}x{info.width}": len(info.keys)},
            )
        )
    return entries


def build_tiny_dataset(
    root: str | Path,
    num_train_shards: int = 4,
    per_shard: int = 4,
    num_val_shards: int = 1,
    frames: int = 12,
    size: tuple[int, int] = (64, 64),
    clip_dim: int = 64,
) -> Path:
    """Write train/val shards under ``root`` and ``root/manifest.json``; returns the manifest path.

    Defaults match the tiny recipe (64x64 clips, 12 frames, 64-wide CLIP features). Idempotent: an
    existing manifest is reused.
    """
    root = Path(root)
    manifest_path = root / "manifest.json"
    if manifest_path.is_file():
        return manifest_path
    train = write_shards(
        root / "train", num_train_shards, per_shard, frames=frames, size=size, clip_dim=clip_dim, prefix="tr"
    )
    val = write_shards(
        root / "val", num_val_shards, per_shard, frames=frames, size=size, clip_dim=clip_dim, prefix="va"
    )
    manifest = DatasetManifest(
        name="tiny",
        schema_version=SCHEMA_VERSION,
        resolutions_px=[tuple(size)],
        fps=8.0,
        num_frames_per_clip=frames,
        encoders={},
        shards=sorted(_entries(train, root, "train") + _entries(val, root, "val"), key=lambda s: s.path),
    )
    manifest.save(manifest_path)
    return manifest_path


def fit_args(
    data_root: str | Path, run_dir: str | Path, max_steps: int = 4, every_n_steps: int = 0, validate: bool = False
) -> list[str]:
    """``animatex-train fit`` arguments: the tiny recipe on ``data_root``'s dataset, writing into ``run_dir``.

    Without ``validate`` no validation runs (no VAE decode, no sample clip), which keeps a run to seconds.
    """
    manifest = Path(data_root) / "manifest.json"
    args = [
        "fit",
        "--config",
        str(TINY_RECIPE),
        "--data.train",
        f"[{{manifest: {manifest}}}]",
        "--data.anchor_pool",
        "null",
        "--data.epi.apply_prob",
        "0",
        "--data.num_workers",
        "0",
        "--model.empty_prompt_cache",
        "null",
        "--trainer.default_root_dir",
        str(run_dir),
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.max_steps",
        str(max_steps),
        "--checkpoint.every_n_steps",
        str(every_n_steps),
    ]
    if validate:
        args += [
            "--data.val",
            f"[{{manifest: {manifest}, split: val}}]",
            "--trainer.val_check_interval",
            str(max_steps),
        ]
    else:
        args += ["--data.val", "null", "--trainer.limit_val_batches", "0"]
    return args


def fit_env(extra_pythonpath: str | Path | None = None) -> dict[str, str]:
    """Environment of a ``fit`` subprocess: one thread per process (two ranks share two cores), DeepSpeed on CPU."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "DS_ACCELERATOR": "cpu",
        "WANDB_MODE": "disabled",
        "PYTHONFAULTHANDLER": "1",
    }
    if extra_pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(extra_pythonpath), os.environ.get("PYTHONPATH")) if p)
    return env


def _stacks_of_group(pgid: int) -> str:
    """Python stacks of every process of a group, with py-spy when it is installed (diagnostics only)."""
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy is None:
        return "(install py-spy to see where the ranks hang)"
    pids = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout.split()
    dumps = [
        subprocess.run([py_spy, "dump", "--pid", pid], capture_output=True, text=True, timeout=60).stdout[-3000:]
        for pid in pids
    ]
    return "\n".join(dumps)


def time_budget(seconds: float) -> float:
    """A subprocess timeout scaled to the machine: ``ANIMATEX_TEST_TIME_SCALE``, by default 8 / CPU cores (at least
    1), so a budget measured on an idle 8-core machine still holds on a loaded 2-core CI runner (x4).

    Budgets only bound hangs; no test asserts on elapsed time.
    """
    scale = os.environ.get("ANIMATEX_TEST_TIME_SCALE")
    return seconds * (float(scale) if scale else max(1.0, 8 / (os.cpu_count() or 1)))


def run_fit(args: list[str], env: dict[str, str], timeout_s: float = 300.0) -> str:
    """Run ``python -m animatex_train <args>`` in its own process group; its output, or an AssertionError with the
    output's tail if it fails or outlives ``timeout_s`` scaled by ``time_budget`` (then the whole group, every rank,
    is killed)."""
    timeout_s = time_budget(timeout_s)
    proc = subprocess.Popen(
        [sys.executable, "-m", "animatex_train", *args],
        cwd=REPO_ROOT,
        env=env,
        text=True,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stacks = _stacks_of_group(proc.pid)  # where each rank hangs, before killing them
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        message = f"fit timed out after {timeout_s} s: {' '.join(args)}\n{output[-4000:]}\n{stacks}"
        raise AssertionError(message) from None
    if proc.returncode != 0:
        raise AssertionError(f"fit failed with exit code {proc.returncode}: {' '.join(args)}\n{output[-6000:]}")
    return output


def build_deepspeed_cpu_ops() -> None:
    """JIT-compile DeepSpeed's CPU ops (CPU Adam, shared-memory collectives) once, in this process.

    Each DeepSpeed fit otherwise compiles them on first use (~30-55 s each, measured) when the extensions folder
    (``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``) is empty, as on a fresh CI runner, with its
    ranks racing for the build lock inside the fit's time budget. Built here, every later fit only loads them.
    """
    if "deepspeed_cpu_ops" in _RUNS:
        return
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.ops.op_builder.cpu import CPUAdamBuilder, ShareMemCommBuilder

    for builder in (CPUAdamBuilder(), ShareMemCommBuilder()):
        if builder.is_compatible(verbose=False):
            builder.load(verbose=False)
    _RUNS["deepspeed_cpu_ops"] = Path(os.environ.get("TORCH_EXTENSIONS_DIR", "~/.cache/torch_extensions"))


PROBE_PATH = REPO_ROOT / "tests" / "training"  # strategy_probe.RunProbe lives there
DDP_ARGS = ["--trainer.strategy", "ddp"]
_RUNS: dict[str, Path] = {}  # one run per name per test session, shared by the modules that need it


def shared_dataset(tmp_path_factory) -> Path:
    """The session's tiny dataset folder (built on first request)."""
    if "data" not in _RUNS:
        _RUNS["data"] = tmp_path_factory.mktemp("tiny_data")
        build_tiny_dataset(_RUNS["data"])
    return _RUNS["data"]


def probed_run(tmp_path_factory, name: str, strategy_args: list[str], steps: int = 4, devices: int = 2) -> Path:
    """The run directory of a ``fit`` of the tiny recipe with ``strategy_args`` and a ``RunProbe`` (``<run>/probe``),
    run on first request and shared for the rest of the session (test modules reuse e.g. the DDP run).

    Validation runs at the middle and the end of training (validation loss and a rendered sample clip, EMA
    weights swapped in), so every strategy's run also checks that validation is collective-safe and that
    training goes on after it."""
    if name not in _RUNS:
        if any("DeepSpeed" in arg for arg in strategy_args):
            build_deepspeed_cpu_ops()  # once per session, before two ranks race to compile them
        data = shared_dataset(tmp_path_factory)
        run_dir = tmp_path_factory.mktemp(f"run_{name}")
        probe = (
            f"--trainer.callbacks+={{class_path: strategy_probe.RunProbe, init_args: "
            f"{{out_dir: {run_dir / 'probe'}, build_vae_early: true}}}}"
        )
        args = [
            *fit_args(data, run_dir, max_steps=steps, every_n_steps=steps, validate=True),
            "--trainer.devices",
            str(devices),
            "--trainer.val_check_interval",
            str(max(1, steps // 2)),
            *strategy_args,
            probe,
        ]
        run_fit(args, fit_env(PROBE_PATH), timeout_s=240)
        _RUNS[name] = run_dir
    return _RUNS[name]
