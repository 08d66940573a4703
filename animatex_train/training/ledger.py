"""The sample ledger: which samples each rank trained on at each step, with the exact loss.

One JSON line per rank per training batch in ``<run dir>/ledger/rank<r>.jsonl``: step, epoch, rank,
sample keys, which of them were placeholders, and the loss as ``float.hex()`` (bit-exact). A resumed
run appends; every line carries the process's ``session`` id, so a reader can tell the segments apart
(``read_ledger``). It is how the exactly-once and exact-resume guarantees are checked, and it lets a
user audit what a model was trained on.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import lightning.pytorch as pl
import torch


class SampleLedger(pl.Callback):
    """Append a ledger line after every training batch.

    Args:
        dirpath: where the ledger goes; defaults to ``<trainer.default_root_dir>/ledger``.
    """

    def __init__(self, dirpath: str | None = None):
        self.dirpath = dirpath
        self.session = f"{os.getpid()}-{time.time_ns()}"
        self._file = None

    def _open(self, trainer: pl.Trainer):
        if self._file is None:
            root = Path(self.dirpath or Path(trainer.default_root_dir) / "ledger")
            root.mkdir(parents=True, exist_ok=True)
            self._file = (root / f"rank{trainer.global_rank}.jsonl").open("a")
        return self._file

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else None
        record = {
            "session": self.session,
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "rank": trainer.global_rank,
            "keys": list(batch.keys),
            "placeholders": [k for k, ok in zip(batch.keys, batch.valid.tolist(), strict=True) if not ok],
            "loss": value,
            "loss_hex": None if value is None else value.hex(),
        }
        f = self._open(trainer)
        f.write(json.dumps(record) + "\n")
        f.flush()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_ledger(path: str | Path) -> list[dict]:
    """Every line of a ledger file (or of all ``rank*.jsonl`` in a ledger folder), in file order."""
    path = Path(path)
    files = sorted(path.glob("rank*.jsonl")) if path.is_dir() else [path]
    return [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]
