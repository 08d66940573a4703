"""A full disk on demand, for ``fit`` subprocesses (``--trainer.callbacks+=storage_faults.FullDisk``).

``FullDisk`` swaps the strategy's ``CheckpointIO`` for one whose file writer raises ``ENOSPC`` after
``after_bytes`` bytes of the checkpoint saved at step ``at_step`` on rank ``rank``: what a disk that fills up
mid-write does, without root or a small filesystem.
"""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins import CheckpointIO


class _FillingFile:
    """A binary file that accepts ``budget`` bytes, then fails as a full disk does."""

    def __init__(self, handle, budget: int, path: Path):
        self.handle, self.budget, self.path = handle, budget, path

    def write(self, data) -> int:
        size = len(memoryview(data).cast("B"))
        if size > self.budget:
            self.handle.write(bytes(memoryview(data).cast("B")[: self.budget]))
            self.budget = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        self.budget -= size
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


class _FullDiskIO(CheckpointIO):
    def __init__(self, inner: CheckpointIO, fault: FullDisk):
        self.inner, self.fault = inner, fault

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if self.fault.trainer.global_step != self.fault.at_step:
            return self.inner.save_checkpoint(checkpoint, path, storage_options)
        buffer = io.BytesIO()  # as Lightning's own save: serialise in memory, then write the bytes out
        torch.save(checkpoint, buffer)
        data = buffer.getvalue()
        with open(path, "wb") as handle:
            filling = _FillingFile(handle, self.fault.after_bytes, Path(path))
            for start in range(0, len(data), 1 << 16):
                filling.write(data[start : start + (1 << 16)])

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return self.inner.load_checkpoint(path, map_location=map_location, weights_only=weights_only)

    def remove_checkpoint(self, path) -> None:
        self.inner.remove_checkpoint(path)


class FullDisk(pl.Callback):
    """Args: at_step: the save that fails; after_bytes: bytes written before ENOSPC; rank: the rank whose disk fills."""

    def __init__(self, at_step: int, after_bytes: int = 65536, rank: int = 0):
        self.at_step, self.after_bytes, self.rank = at_step, after_bytes, rank
        self.trainer: pl.Trainer | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.trainer = trainer
        if trainer.global_rank == self.rank:
            trainer.strategy.checkpoint_io = _FullDiskIO(trainer.strategy.checkpoint_io, self)
