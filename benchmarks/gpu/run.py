"""First contact with a GPU: every figure of the paper configuration on one card, in one bounded run.

Stages (each writes its figures into ``<out>/gpu_report.json`` as soon as it ends, so a run cut short still
reports what it measured; a stage that would not fit the remaining ``--budget-s`` is skipped and says so):

1. ``environment``: Python, torch, CUDA, cuDNN, GPU, package versions, SDPA kernels available;
2. ``matmul_peak``: dense bf16 8192^3 products on random data, the MFU denominator;
3. ``steps``: the paper denoiser's training step (bf16 autocast, block activation checkpointing, fused AdamW)
   at micro-batch 1 and 2 for each attention kernel, plus channels-last: ms/step, samples/s, MFU, peak memory;
4. ``profile``: kernel time by name and by family for one step of the best configuration;
5. ``fit`` and ``resume``: ``animatex-train fit`` with the paper recipe and the one-GPU ZeRO-2 overlay on shards
   made on the machine (``fit_stage.py``), validation sampling once, a checkpoint, then a resumed run;
6. ``gpu_tests``: ``pytest -m gpu``;
7. ``compile``: the step with regionally compiled blocks, in its own process, in the time left.

``--dry-run`` runs the same stages on the CPU with the tiny model and tiny clips (a few minutes on 2 cores).
Run it through ``run.sh`` on a bare machine (it installs carried wheels); the last lines are a summary table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

import animatex_train  # noqa: F401  (compat shim first)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fit_stage  # noqa: E402
import step_bench  # noqa: E402

from animatex_train.training.performance import to_channels_last  # noqa: E402


class Report:
    """The JSON report, rewritten after every stage."""

    def __init__(self, path: Path, budget_s: float):
        self.path, self.budget_s, self.start = path, budget_s, time.perf_counter()
        self.data: dict = {"stages": {}}

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)

    def stage(self, name: str, needs_s: float, fn) -> dict | None:
        """Run ``fn()`` if ``needs_s`` seconds are left; record its result or its error, and the time it took."""
        if self.left() < needs_s:
            self.data["stages"][name] = {"skipped": f"needs ~{needs_s:.0f} s, {self.left():.0f} s left"}
            print(f"[{name}] skipped: {self.data['stages'][name]['skipped']}", flush=True)
            self.save()
            return None
        print(f"[{name}] start ({self.left():.0f} s left)", flush=True)
        start = time.perf_counter()
        try:
            result = fn()
            entry = {"result": result}
        except Exception as error:  # noqa: BLE001 - a benchmark reports every failure and goes on
            traceback.print_exc()
            entry, result = {"error": f"{type(error).__name__}: {error}"[:2000]}, None
        entry["seconds"] = time.perf_counter() - start
        self.data["stages"][name] = entry
        self.save()
        print(f"[{name}] done in {entry['seconds']:.1f} s", flush=True)
        return result

    def save(self) -> None:
        self.data["elapsed_s"] = time.perf_counter() - self.start
        tmp = self.path.with_suffix(".partial")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


def environment() -> dict:
    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "cpus": os.cpu_count(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            gpu_memory_gib=props.total_memory / 2**30,
            sms=props.multi_processor_count,
            capability=f"{props.major}.{props.minor}",
        )
        info["sdpa_enabled"] = {
            name: getattr(torch.backends.cuda, f"{name}_sdp_enabled")()
            for name in ("flash", "mem_efficient", "cudnn", "math")
        }
        try:
            info["nvidia_smi"] = subprocess.run(
                [
                    "nvidia-smi",
                    "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,temperature.gpu",
                    "--format=csv",
                ],
                capture_output=True,
                text=True,
                timeout=20,
            ).stdout
        except (OSError, subprocess.TimeoutExpired) as error:
            info["nvidia_smi"] = str(error)
    from importlib.metadata import PackageNotFoundError, version

    for package in (
        "lightning",
        "deepspeed",
        "diffusers",
        "open_clip_torch",
        "webdataset",
        "jsonargparse",
        "av",
        "flash_attn",
        "numpy",
        "triton",
    ):
        try:
            info[package] = version(package)
        except PackageNotFoundError:
            info[package] = None
    return info


def step_matrix(
    bench: step_bench.StepBench,
    configs: list[tuple[int, str]],
    steps: int,
    warmup: int,
    peak: float | None,
    deadline: float,
) -> list[dict]:
    """Each (micro-batch, attention) configuration; an out-of-memory or unsupported kernel is a row, not a stop."""
    rows = []
    for batch, attention in configs:
        if time.perf_counter() > deadline:
            rows.append({"batch": batch, "attention": attention, "skipped": "stage time budget"})
            continue
        try:
            row = bench.measure(batch, attention, steps, warmup, peak)
        except torch.OutOfMemoryError as error:
            row = {"batch": batch, "attention": attention, "error": f"out of memory: {str(error)[:200]}"}
        except RuntimeError as error:  # e.g. a pinned kernel that cannot run these shapes
            row = {"batch": batch, "attention": attention, "error": str(error)[:400]}
        bench.optimizer.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        print("   ", json.dumps({k: v for k, v in row.items() if k != "ms_all"}, default=str), flush=True)
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_out"), help="report, logs and summary go here")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (data, runs); default <out>/work")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny model and clips: checks the plumbing")
    parser.add_argument("--budget-s", type=float, default=480.0, help="stop starting stages after this long")
    parser.add_argument("--fit-steps", type=int, default=None, help="steps of the fit (default: 20; dry run: 4)")
    parser.add_argument("--skip", default="", help="comma-separated stages to skip")
    args = parser.parse_args()
    dry = args.dry_run
    args.fit_steps = args.fit_steps or (4 if dry else 20)
    if not dry and not torch.cuda.is_available():
        parser.error("no CUDA device; use --dry-run on a CPU machine")
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    report = Report(args.out / "gpu_report.json", args.budget_s)
    report.data["dry_run"] = dry
    device = torch.device("cpu" if dry else "cuda")
    if dry:
        torch.set_num_threads(1)  # the data preparation runs beside it; a small CPU machine has few cores

    report.stage("environment", 0, environment)
    data_root, data_log = work / "dataset", args.out / "dataset.log"
    dataset = None if "fit" in skip else fit_stage.start_dataset(data_root, dry, data_log)
    peak = report.stage("matmul_peak", 10, lambda: step_bench.matmul_peak_tflops(device, n=1024 if dry else 8192))
    peak_tflops = None if dry or peak is None else peak["tflops"]

    bench_holder: dict = {}

    def steps_stage() -> dict:
        bench = bench_holder["bench"] = step_bench.StepBench(device, tiny=dry)
        kernels = ["sdpa", "math"] if dry else ["sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "sdpa"]
        configs = [(1, k) for k in kernels] + ([] if dry else [(2, k) for k in kernels[:2]] + [(4, kernels[0])])
        steps, warmup = (1, 1) if dry else (4, 2)
        rows = step_matrix(bench, configs, steps, warmup, peak_tflops, time.perf_counter() + (60 if dry else 170))
        return {
            "params": bench.params,
            "forward_tflops_per_sample": bench.forward_flops / 1e12,
            "build_s": bench.build_s,
            "rows": rows,
        }

    steps = None if "steps" in skip else report.stage("steps", 60 if dry else 200, steps_stage)
    best = _best_row(steps)
    if best and "profile" not in skip:
        report.stage(
            "profile", 15 if dry else 30, lambda: bench_holder["bench"].profile(best["batch"], best["attention"])
        )
    if best and not dry and "channels_last" not in skip:

        def channels_last() -> dict:
            bench = bench_holder["bench"]
            to_channels_last(bench.model)
            return step_matrix(
                bench, [(best["batch"], best["attention"])], 3, 2, peak_tflops, time.perf_counter() + 60
            )[0]

        report.stage("channels_last", 45, channels_last)
    bench_holder.clear()  # free the benchmark model before the fit builds its own
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

    if dataset is not None:
        report.stage(
            "dataset",
            0,
            lambda: {
                "returncode": dataset.wait(timeout=max(1.0, report.left())),
                "log_tail": data_log.read_text(errors="replace")[-1500:],
            },
        )
    run_dir, fit_log = work / "fit", args.out / "fit.log"
    extra = ["--performance.attention", best["attention"]] if best and not dry else []
    if dataset is not None and dataset.returncode == 0:

        def fit() -> dict:
            command = fit_stage.fit_command(data_root, run_dir, args.fit_steps, dry, peak_tflops, extra)
            return {
                **fit_stage.run_logged(command, fit_log, report.left() - 30),
                **fit_stage.summarise_fit(run_dir, fit_log),
            }

        fitted = report.stage("fit", 90 if dry else 200, fit)
        if fitted and fitted.get("returncode") == 0:

            def resume() -> dict:
                command = fit_stage.fit_command(
                    data_root,
                    run_dir,
                    args.fit_steps + 2,
                    dry,
                    peak_tflops,
                    [*extra, "--trainer.log_every_n_steps", "1"],
                )
                command += ["--checkpoint.save_on_train_end", "false", "--checkpoint.every_n_steps", "0"]
                result = fit_stage.run_logged(command, fit_log, report.left() - 20)  # (a second 33 GB save won't fit)
                losses = fit_stage.summarise_fit(run_dir, fit_log)["losses"]
                result["steps_after_resume"] = [s for s, _ in losses if s >= args.fit_steps]
                result["checkpoints"] = fit_stage.summarise_fit(run_dir, fit_log)["checkpoints"]
                return result

            report.stage("resume", 40 if dry else 90, resume)
    if "gpu_tests" not in skip:
        report.stage(
            "gpu_tests",
            20 if dry else 60,
            lambda: (
                fit_stage.run_logged(
                    [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/gpu", "-p", "no:cacheprovider"],
                    args.out / "gpu_tests.log",
                    min(report.left() - 10, 240),
                )
                | {"tail": (args.out / "gpu_tests.log").read_text(errors="replace")[-1200:]}
            ),
        )
    if best and "compile" not in skip:

        def compiled() -> dict:
            command = [
                sys.executable,
                str(Path(__file__).parent / "step_bench.py"),
                "--batch",
                str(best["batch"]),
                "--attention",
                best["attention"],
                "--compile-blocks",
                "--steps",
                "3",
                "--warmup",
                "2",
                *(["--tiny"] if dry else []),
                *(["--peak-tflops", str(peak_tflops)] if peak_tflops else []),
            ]
            log = args.out / "compile.log"
            result = fit_stage.run_logged(command, log, report.left() - 5)
            lines = [x for x in log.read_text(errors="replace").splitlines() if x.startswith("RESULT ")]
            return {**result, **(json.loads(lines[-1][7:]) if lines else {"tail": log.read_text()[-1500:]})}

        report.stage("compile", 30 if dry else 90, compiled)
    print_summary(report.data)
    return 0


def _best_row(steps: dict | None) -> dict | None:
    rows = [r for r in (steps or {}).get("rows", []) if "ms_per_step" in r]
    return max(rows, key=lambda r: r["samples_per_s"]) if rows else None


def print_summary(data: dict) -> None:
    stages = data["stages"]
    print("\n==== summary ====")
    env = stages.get("environment", {}).get("result", {})
    print(f"device: {env.get('gpu', 'cpu')}  torch {env.get('torch')}  cuda {env.get('cuda')}")
    peak = stages.get("matmul_peak", {}).get("result")
    if peak:
        print(f"matmul peak: {peak['tflops']:.1f} TFLOP/s ({peak['dtype']}, n={peak['n']})")
    rows = (stages.get("steps", {}).get("result") or {}).get("rows", [])
    if rows:
        print(f"{'mb':>3} {'attention':<15} {'ms/step':>9} {'samples/s':>10} {'MFU':>6} {'peak GiB':>9}")
    for r in rows + [stages.get("channels_last", {}).get("result") or {}]:
        if "ms_per_step" in r:
            mfu = f"{r['mfu']:.3f}" if r.get("mfu") is not None else "-"
            print(
                f"{r['batch']:>3} {r['attention']:<15} {r['ms_per_step']:>9.1f} {r['samples_per_s']:>10.3f} "
                f"{mfu:>6} {r.get('peak_memory_gib', 0):>9.1f}"
            )
        elif r:
            print(f"{r.get('batch', '?'):>3} {r.get('attention', '?'):<15} {r.get('error') or r.get('skipped')}")
    for name in ("fit", "resume", "gpu_tests", "compile", "dataset", "profile"):
        entry = stages.get(name)
        if entry is None:
            continue
        result = entry.get("result") or {}
        brief = {
            k: result.get(k)
            for k in (
                "returncode",
                "samples_per_s",
                "mfu",
                "data_wait_fraction",
                "peak_memory_gib",
                "ms_per_step",
                "steps_after_resume",
                "timed_out",
            )
            if k in result
        }
        print(f"{name}: {entry.get('error') or entry.get('skipped') or brief} ({entry.get('seconds', 0):.0f} s)")
    print(f"elapsed: {data.get('elapsed_s', 0):.0f} s")


if __name__ == "__main__":
    raise SystemExit(main())
