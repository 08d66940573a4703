"""Hangs on demand, for ``fit`` subprocesses (``--trainer.callbacks+=hang_faults.StopLoaderWorkers``)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import lightning.pytorch as pl


class StopLoaderWorkers(pl.Callback):
    """SIGSTOP this rank's loader worker processes after step ``at_step``: a worker stuck as on a hung filesystem
    (it cannot act on SIGTERM either)."""

    def __init__(self, at_step: int = 2):
        self.at_step = at_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            for child in multiprocessing.active_children():
                os.kill(child.pid, signal.SIGSTOP)


class StallRank(pl.Callback):
    """Rank ``rank`` stops taking part after step ``at_step`` (sleeps ``seconds``), writing its pid to ``pid_file``."""

    def __init__(self, pid_file: str, rank: int = 1, at_step: int = 2, seconds: float = 600.0):
        self.pid_file, self.rank, self.at_step, self.seconds = pid_file, rank, at_step, seconds

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.at_step:
            with open(self.pid_file, "w") as handle:
                handle.write(str(os.getpid()))
            time.sleep(self.seconds)
