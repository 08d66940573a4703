"""Collate an ablation campaign from its run directories (no W&B needed): one row per ablation.

A campaign folder holds one run directory per ablation (``<out>/<name>/``). Each run directory is read for:

* ``ablation.json``: written by ``animatex-train ablate`` (status, exit code, wall time, the error's last line);
* ``ledger/rank*.jsonl``: the sample ledger's exact loss of every training step (``training/ledger.py``);
* ``metrics.jsonl``: validation and end-of-fit metrics (``training/run_metrics.py``).

Train losses of different EPI ablations are measured on differently transformed poses; the validation
loss (validation never applies EPI) is the comparable column, hence its difference to the full model.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from animatex_train.launch.campaign import Ablation, describe_changes, overlay_changes
from animatex_train.training.ledger import read_ledger
from animatex_train.training.run_metrics import read_run_metrics

STATE_FILE = "ablation.json"
TABLE_STEM = "ablations"


@dataclass
class AblationResult:
    """One collated row.

    Attributes:
        name: the ablation.
        row: its label in the paper.
        tables: the paper tables it appears in.
        changes: the settings its overlay changes.
        status: finished, failed, interrupted, running, submitted, stopped at step n, incomplete, not started, not run.
        steps: optimizer steps reached.
        train_loss: mean training loss of the last ``k`` ledger steps (the logged loss without a ledger).
        val_loss: the last validation loss.
        val_delta: ``val_loss`` minus the full model's.
        wall_s: wall time of the run (every attempt), in seconds.
        error: the last line of a failed run's output.
    """

    name: str
    row: str
    tables: str
    changes: str
    status: str
    steps: int | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    val_delta: float | None = None
    wall_s: float | None = None
    error: str = ""


def read_state(run_dir: Path) -> dict[str, Any]:
    """``<run_dir>/ablation.json``, or {} when there is none (or it is unreadable: it is rewritten next run)."""
    try:
        return json.loads((run_dir / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def ledger_losses(run_dir: Path) -> dict[int, float]:
    """``step -> loss`` from the ledger: mean over ranks; for a step trained twice (a resume), the newest line."""
    per_step: dict[int, dict[int, float]] = {}
    ledger = run_dir / "ledger"
    if not ledger.is_dir():
        return {}
    for record in read_ledger(ledger):
        if record.get("loss") is not None:
            per_step.setdefault(int(record["step"]), {})[int(record.get("rank", 0))] = float(record["loss"])
    return {step: sum(v.values()) / len(v) for step, v in sorted(per_step.items())}


def _status(state: dict[str, Any], fit_end: dict[str, Any] | None, has_ledger: bool, exists: bool) -> str:
    if state.get("status") in ("failed", "interrupted", "finished"):
        return state["status"]
    if fit_end is not None:
        max_steps = fit_end.get("max_steps")
        if max_steps is None or max_steps < 0 or fit_end["step"] >= max_steps:
            return "finished"
    if state.get("status"):
        return state["status"]  # running, submitted
    if fit_end is not None:  # a Slurm run that stopped early (time limit without requeue, a manual stop)
        return f"stopped at step {fit_end['step']}"
    return "incomplete" if has_ledger else ("not started" if exists else "not run")


def collate_run(ablation: Ablation, run_dir: Path, last_k: int = 5) -> AblationResult:
    """The row of one ablation from its run directory (which may not exist yet)."""
    state = read_state(run_dir)
    records = read_run_metrics(run_dir)
    fit_ends = [r for r in records if r.get("event") == "fit_end"]
    validations = [r for r in records if r.get("event") == "validation" and "val/loss" in r.get("metrics", {})]
    losses = ledger_losses(run_dir)
    status = _status(state, fit_ends[-1] if fit_ends else None, bool(losses), run_dir.is_dir())
    result = AblationResult(
        ablation.name, ablation.row, ablation.tables, describe_changes(overlay_changes(ablation)), status
    )
    if losses:
        tail = list(losses.values())[-last_k:]
        result.train_loss = sum(tail) / len(tail)
    elif fit_ends and "train/loss" in fit_ends[-1]["metrics"]:
        result.train_loss = fit_ends[-1]["metrics"]["train/loss"]
    if validations:
        result.val_loss = validations[-1]["metrics"]["val/loss"]
    steps = [r["step"] for r in records] + list(losses)
    result.steps = max(steps) if steps else None
    if state.get("wall_s") is not None:
        result.wall_s = float(state["wall_s"])
    elif fit_ends:
        result.wall_s = sum(float(r.get("wall_s", 0.0)) for r in fit_ends)
    result.error = str(state.get("error") or "") if result.status == "failed" else ""
    return result


def collate(out: Path, ablations: Sequence[Ablation], last_k: int = 5) -> list[AblationResult]:
    """One row per ablation (in campaign order) from ``<out>/<name>/``; validation losses relative to full."""
    rows = [collate_run(a, out / a.name, last_k) for a in ablations]
    full = next((r.val_loss for r in rows if r.name == "full"), None)
    if full is not None:
        for r in rows:
            r.val_delta = None if r.val_loss is None else r.val_loss - full
    return rows


def _number(value: float | None, difference: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    # Differences between short runs can be far below the loss's 4th decimal: scientific, so they stay visible.
    return f"{value:+.2e}" if difference else f"{value:.4f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


HEADERS = (
    "ablation",
    "paper row",
    "tables",
    "changes",
    "status",
    "steps",
    "train loss",
    "val loss",
    "Δ val vs full",
    "wall time",
)


def table_cells(row: AblationResult) -> list[str]:
    """The row's cells as text, in ``HEADERS`` order (shared by the markdown and the console tables)."""
    status = row.status if not row.error else f"{row.status}: {row.error[:80]}"
    return [
        row.name,
        row.row,
        row.tables,
        row.changes,
        status,
        "–" if row.steps is None else str(row.steps),
        _number(row.train_loss),
        _number(row.val_loss),
        _number(row.val_delta, difference=True),
        _duration(row.wall_s),
    ]


def markdown_table(rows: Sequence[AblationResult], last_k: int = 5) -> str:
    """The campaign as a markdown table (the train loss is the mean of the last ``last_k`` steps)."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    headers = [h if h != "train loss" else f"train loss (last {last_k})" for h in HEADERS]
    lines = [line(headers), line(["---"] * len(headers))]
    lines += [line(table_cells(r)) for r in rows]
    return "\n".join(lines) + "\n"


def write_tables(out: Path, rows: Sequence[AblationResult], last_k: int = 5) -> tuple[Path, Path]:
    """``<out>/ablations.md`` and ``<out>/ablations.csv`` (numbers unrounded in the CSV)."""
    out.mkdir(parents=True, exist_ok=True)
    md = out / f"{TABLE_STEM}.md"
    md.write_text(markdown_table(rows, last_k))
    path = out / f"{TABLE_STEM}.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0]) if rows else AblationResult.__annotations__))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in asdict(row).items()})
    return md, path
