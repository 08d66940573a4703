"""``animatex-train ablate --local``: the ablations one after another on this machine, then the collated table.

Each run is its own ``python -m animatex_train fit`` process: a crash of one run is recorded in its
``ablation.json`` and the campaign goes on, and W&B runs, signal handlers and global state never leak from
one run into the next. Rerunning the command skips finished runs; the others resume from their checkpoints.
With ``--eval_recipe`` every finished run without ``eval/metrics.json`` is then scored by its own ``evaluate``
process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from animatex_train.launch.campaign import Ablation, CampaignError, run_overrides, write_json
from animatex_train.launch.collate import STATE_FILE, AblationResult, collate, markdown_table, read_state, write_tables

LOG_FILE = "ablate.log"
_ERROR_LINE = re.compile(r"^([\w.]+(Error|Exception|Interrupt)\b|error:)")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _merged_yaml(configs: list[str]) -> dict[str, Any]:
    """The ``--config`` files merged like jsonargparse does for plain sections: later mappings win key by key."""

    def merge(base: dict, top: dict) -> dict:
        return {
            **base,
            **{
                k: merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
                for k, v in top.items()
            },
        }

    merged: dict[str, Any] = {}
    for path in configs:
        merged = merge(merged, yaml.safe_load(Path(path).read_text()) or {})
    return merged


def data_overrides(configs: list[str], passthrough: list[str], out: Path, console: Console) -> list[str]:
    """[] when the recipe's datasets exist; else, for a tiny-encoder recipe, build the demo's embedded dataset once
    into ``<out>/data`` and return the arguments that point the runs at it.

    The tiny recipe names ``demo_run/data/...`` (what ``animatex-train demo`` writes), so a fresh clone has no
    data; the embedded dataset is prepared with the tiny random-weight VAE and CLIP and fits no other recipe, so
    for any other recipe missing data is an error, never a silent switch to synthetic clips.

    Raises:
        CampaignError: the data is missing and the recipe is not a tiny-encoder one, or building failed.
    """
    if any(a.startswith("--data.train") for a in passthrough):
        return []  # the user points the runs at their data
    merged = _merged_yaml(configs)
    data = merged.get("data") or {}
    paths = [s.get("manifest") for s in (data.get("train") or []) + (data.get("val") or []) if isinstance(s, dict)]
    paths += [data["anchor_pool"]] if data.get("anchor_pool") else []
    missing = [str(p) for p in paths if not (p and Path(p).exists())]
    if paths and not missing:
        return []
    model = merged.get("model") or {}
    if not ((model.get("vae") or {}).get("tiny") and (model.get("clip") or {}).get("tiny")):
        raise CampaignError(
            f"the recipe's data is missing ({', '.join(missing) or 'data.train is empty'}): fix its "
            "data paths, or pass them after --, e.g. -- --data.train='[{manifest: ...}]'"
        )
    from animatex_train.embedded_dataset import build_embedded_dataset, embedded_dataset_overrides

    console.print(
        f"[yellow]the tiny recipe's data ({', '.join(missing)}) is missing: building the embedded "
        f"synthetic dataset once into {out / 'data'}[/]"
    )
    build_embedded_dataset(out / "data" / "videos", out / "data" / "shards", console=console)
    return embedded_dataset_overrides(out / "data" / "shards")


def _last_error(log: Path) -> str:
    """The exception (or ``error:``) line nearest the end of a run's log, else its last line."""
    try:
        with log.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 20000))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    lines = [_ANSI.sub("", ln) for ln in lines]  # W&B and rich colour their output
    errors = [ln for ln in lines if _ERROR_LINE.match(ln)]
    return (errors or lines or [""])[-1][:500]


def _current_step(run_dir: Path) -> int | None:
    """The step of the ledger's last line (rank 0), for the progress display; None before the first step."""
    path = run_dir / "ledger" / "rank0.jsonl"
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            return int(json.loads(f.read().decode().strip().splitlines()[-1])["step"])
    except (OSError, ValueError, IndexError, KeyError):
        return None


def run_fit(command: list[str], log: Path, echo: Console | None, on_poll) -> int:
    """Run one ``fit`` (or ``evaluate``) process, its output appended to ``log`` (and echoed); ``on_poll()`` about
    once a second."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as sink:
        sink.write(f"\n$ {' '.join(command)}\n")
        sink.flush()
        proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

        def pump() -> None:  # a thread, so the progress display keeps moving while the run is quiet
            for line in proc.stdout:
                sink.write(line)
                if echo is not None:
                    echo.print(line.rstrip("\n"), markup=False, highlight=False)
            sink.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            while proc.poll() is None:
                on_poll()
                time.sleep(1.0)
        except KeyboardInterrupt:
            # A terminal's Ctrl-C reaches the run too (same process group); a SIGINT sent to this process alone
            # does not, so pass it on if the run is still going, then give it time to stop cleanly.
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=60)
            if proc.poll() is None:
                proc.kill()
            raise
        finally:
            reader.join(timeout=10)
    return proc.returncode


def run_local(
    args: argparse.Namespace,
    ablations: list[Ablation],
    configs: list[str],
    out: Path,
    group: str,
    passthrough: list[str],
    console: Console,
) -> int:
    """Run the ablations one after another; returns 0 when all finished, 1 when one failed, 130 on Ctrl-C."""
    campaign_started = time.perf_counter()
    todo = []
    for a in ablations:
        state = read_state(out / a.name)
        if state.get("status") == "finished" and state.get("max_steps") == args.max_steps:
            console.print(f"[dim]skip {a.name}: finished ({state.get('steps')} steps)[/]")
        else:
            todo.append(a)  # never run, failed, interrupted, or asked for other steps: (re)run, resuming
    console.print(
        f"ablation campaign [bold]{group}[/] in {out}: {len(todo)} to run, {len(ablations) - len(todo)} finished"
    )
    interrupted = False
    if todo:
        try:
            data = data_overrides(configs, passthrough, out, console)
        except CampaignError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        base = [sys.executable, "-m", "animatex_train", "fit", *(a for c in configs for a in ("--config", c))]
        # Output goes to a log file, where progress bars are noise; a later --trainer.enable_progress_bar wins.
        quiet = ["--trainer.enable_progress_bar=false"]
        with _progress(console) as progress:
            task = progress.add_task("ablations", total=len(todo))
            for ablation in todo:
                run_dir = out / ablation.name
                overrides = run_overrides(ablation, run_dir, group, args.max_steps, args.wandb)
                command = [*base, *overrides, *data, *quiet, *passthrough]
                interrupted = _run_one(ablation, command, run_dir, args, progress, task)
                progress.advance(task)
                if interrupted:
                    break
    evaluations_failed = False
    if args.eval_recipe and not interrupted:
        evaluations_failed, interrupted = _evaluate_finished(ablations, out, args, console)
    rows = collate(out, ablations, args.last_k)
    md, csv_path = write_tables(out, rows, args.last_k)
    _print_summary(console, rows, group, md, csv_path, args.last_k, time.perf_counter() - campaign_started)
    if args.eval_recipe:
        print("\n" + write_metrics_table(out, ablations), end="", flush=True)
    if interrupted:
        return 130
    return 0 if all(r.status == "finished" for r in rows) and not evaluations_failed else 1


def _progress(console: Console) -> Progress:
    """The campaign's progress display (one bar for the runs, one for the evaluations)."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def write_metrics_table(out: Path, ablations: list[Ablation]) -> str:
    """``<out>/ablation_metrics.md``: the seven metrics of every run evaluated into ``<run>/eval``; returns it."""
    from animatex_train.eval.ablation_table import metrics_table

    table = metrics_table(out, ablations)
    (out / "ablation_metrics.md").write_text(table)
    return table


def evaluate_command(args: argparse.Namespace, run_dir: Path) -> list[str]:
    """The ``evaluate`` process of one finished run: its newest complete checkpoint, the report in ``<run>/eval``."""
    from animatex_train.eval.ablation_table import EVAL_DIR

    return [
        sys.executable,
        "-m",
        "animatex_train",
        "evaluate",
        "--recipe",
        args.eval_recipe,
        "--checkpoint",
        str(run_dir / "checkpoints"),
        "-o",
        str(run_dir / EVAL_DIR),
        "--no_progress",
        *args.eval_arg,
    ]


def _evaluate_finished(
    ablations: list[Ablation], out: Path, args: argparse.Namespace, console: Console
) -> tuple[bool, bool]:
    """Evaluate every finished run that has no ``eval/metrics.json`` yet (a rerun scores only what is missing);
    each run's ``ablation.json`` records ``eval_status``. Returns (one failed, Ctrl-C)."""
    from animatex_train.eval.ablation_table import read_eval

    todo = [
        a for a in ablations if read_state(out / a.name).get("status") == "finished" and read_eval(out / a.name) is None
    ]
    failed = False
    if not todo:
        return failed, False
    with _progress(console) as progress:
        task = progress.add_task("evaluations", total=len(todo))
        for ablation in todo:
            run_dir = out / ablation.name
            progress.update(task, description=f"evaluate {ablation.name}")
            started = time.perf_counter()
            try:
                code = run_fit(
                    evaluate_command(args, run_dir),
                    run_dir / LOG_FILE,
                    progress.console if args.verbose else None,
                    lambda: None,
                )
            except KeyboardInterrupt:
                return failed, True
            state = read_state(run_dir)
            state["eval_status"] = "finished" if code == 0 else "failed"
            state["eval_error"] = None if code == 0 else _last_error(run_dir / LOG_FILE)
            write_json(run_dir / STATE_FILE, state)
            failed = failed or code != 0
            mark = "[green]evaluated[/]" if code == 0 else f"[red]evaluation failed (exit {code})[/]"
            progress.console.print(
                f"{ablation.name}: {mark} in {time.perf_counter() - started:.1f} s"
                + (f": {state['eval_error']}" if state["eval_error"] else "")
            )
            progress.advance(task)
    return failed, False


def _run_one(
    ablation: Ablation, command: list[str], run_dir: Path, args: argparse.Namespace, progress: Progress, task: Any
) -> bool:
    """Run one ablation, recording its state in ``<run_dir>/ablation.json``; True when Ctrl-C stopped it."""
    state = read_state(run_dir)
    state.update(
        name=ablation.name,
        status="running",
        max_steps=args.max_steps,
        error=None,
        attempts=int(state.get("attempts", 0)) + 1,
    )
    write_json(run_dir / STATE_FILE, state)  # "running" stays if this process dies: the next rerun resumes it

    def poll() -> None:
        step = _current_step(run_dir)
        where = "starting" if step is None else f"step {step}" + (f"/{args.max_steps}" if args.max_steps else "")
        progress.update(task, description=f"{ablation.name}: {where}")

    started = time.perf_counter()
    interrupted = False
    try:
        code = run_fit(command, run_dir / LOG_FILE, progress.console if args.verbose else None, poll)
    except KeyboardInterrupt:
        code, interrupted = 130, True
    state["wall_s"] = float(state.get("wall_s") or 0.0) + time.perf_counter() - started  # every attempt counts
    state["returncode"] = code
    state["status"] = "interrupted" if interrupted else "finished" if code == 0 else "failed"
    state["steps"] = _current_step(run_dir)
    state["error"] = None if code == 0 or interrupted else _last_error(run_dir / LOG_FILE)
    write_json(run_dir / STATE_FILE, state)
    mark = "[green]finished[/]" if code == 0 else f"[red]{state['status']} (exit {code})[/]"
    progress.console.print(
        f"{ablation.name}: {mark} in {time.perf_counter() - started:.1f} s"
        + (f": {state['error']}" if state["error"] else "")
    )
    return interrupted


def _print_summary(
    console: Console, rows: list[AblationResult], group: str, md: Path, csv_path: Path, last_k: int, wall_s: float
) -> None:
    """The collated markdown table (plain, to copy), then a short rich summary of the campaign."""
    print(markdown_table(rows, last_k), end="", flush=True)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    style = {"finished": "green", "failed": "red"}
    table = Table(title=f"ablation campaign {group}", show_header=False)
    table.add_row("runs", ", ".join(f"[{style.get(s, 'yellow')}]{n} {s}[/]" for s, n in counts.items()))
    for row in rows:
        if row.status in ("failed", "interrupted"):
            table.add_row(f"[red]{row.name}[/]", f"{row.status}{': ' + row.error if row.error else ''}")
    table.add_row("this invocation", f"{wall_s:.1f} s")
    table.add_row("tables", f"{md}\n{csv_path}")
    console.print(table)
