"""The run's scalar metrics as JSON lines in the run directory, readable without W&B.

``RunMetrics`` appends one line to ``<run dir>/metrics.jsonl`` after every validation (``event:
"validation"``) and when ``fit`` ends (``event: "fit_end"``, with the session's wall time and
``max_steps``). A resumed or requeued run appends, so the file holds every session; the newest line of
each kind is the run's current state. ``animatex-train ablate collate`` reads it (with the sample
ledger) to tabulate a campaign from run directories alone, locally or on a cluster where W&B is offline.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

METRICS_FILE = "metrics.jsonl"


class RunMetrics(pl.Callback):
    """Append the trainer's scalar metrics to ``<trainer.default_root_dir>/metrics.jsonl`` (global rank 0).

    Args:
        dirpath: where ``metrics.jsonl`` goes; defaults to ``trainer.default_root_dir``.
    """

    def __init__(self, dirpath: str | None = None):
        self.dirpath = dirpath
        self._started = time.perf_counter()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:  # the sanity check's metrics are discarded by Lightning too
            self._append(trainer, "validation")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._append(
            trainer, "fit_end", wall_s=round(time.perf_counter() - self._started, 3), max_steps=trainer.max_steps
        )

    def _append(self, trainer: pl.Trainer, event: str, **extra: Any) -> None:
        if not trainer.is_global_zero:
            return
        record = {
            "event": event,
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "time": time.time(),
            **extra,
            "metrics": scalar_metrics(trainer.callback_metrics),
        }
        path = Path(self.dirpath or trainer.default_root_dir) / METRICS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())  # a preempted job may be killed right after fit ends


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite scalar entries of ``metrics`` as floats (tensors included); the rest is left out."""
    out = {}
    for name, value in metrics.items():
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            value = value.item()
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[name] = float(value)
    return out


def read_run_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every record of ``<run_dir>/metrics.jsonl`` in order; [] when there is none. A torn last line is skipped."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a process killed mid-write leaves a partial last line
            continue
    return records
