"""A stalled rank becomes an error that names it, and does not outlive the others (docs/reliability.md F24).

When one rank stalls (a hung filesystem, a deadlock in a worker, a stopped process), the others fail at their
next collective after the process-group timeout (``distributed.timeout_s``) with gloo/NCCL's "timed out", which
names no rank; under Lightning's own launcher the stuck rank then kept running, orphaned (docs/reliability.md,
probe D4).

``RankHeartbeat`` (on in every multi-process run) has every rank record the last step it finished in
``<run>/heartbeat/rank-<N>`` (a few bytes per step). When a run fails on a rank, it compares the records and
adds the ranks that fell behind to the error (``error:`` line of the CLI), and rank 0 kills the rank processes
its launcher started, so none survives. Under Slurm, ``srun --kill-on-bad-exit=1`` does the killing.
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

import lightning.pytorch as pl

log = logging.getLogger(__name__)
HEARTBEAT_DIR = "heartbeat"


def lagging_ranks(records: dict[int, tuple[int, float]]) -> list[int]:
    """Ranks whose last finished step is behind the furthest rank's (empty when all are level)."""
    if not records:
        return []
    furthest = max(step for step, _ in records.values())
    return sorted(rank for rank, (step, _) in records.items() if step < furthest)


class RankHeartbeat(pl.Callback):
    """Per-rank "last finished step" records; on a failure, names the ranks that fell behind (see module doc)."""

    def __init__(self, every_n_steps: int = 1):
        self.every_n_steps = every_n_steps
        self._dir: Path | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._dir = Path(trainer.default_root_dir) / HEARTBEAT_DIR
        self._dir.mkdir(parents=True, exist_ok=True)
        self._beat(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self._beat(trainer)

    def _beat(self, trainer: pl.Trainer) -> None:
        if self._dir is None:
            return
        path = self._dir / f"rank-{trainer.global_rank}"
        tmp = path.with_suffix(".partial")
        tmp.write_text(f"{trainer.global_step} {time.time():.3f}\n")
        tmp.replace(path)  # a reader never sees half a record

    def records(self, world_size: int) -> dict[int, tuple[int, float]]:
        out = {}
        for rank in range(world_size):
            try:
                step, stamp = (self._dir / f"rank-{rank}").read_text().split()
                out[rank] = (int(step), float(stamp))
            except (OSError, ValueError, TypeError):
                continue
        return out

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if trainer.world_size < 2 or self._dir is None:
            return
        records = self.records(trainer.world_size)
        behind = lagging_ranks(records)
        if not behind:
            return  # every rank level: not a stall (a failure every rank sees, a preemption): each rank ends itself
        now = time.time()
        described = ", ".join(
            f"rank {r} (last finished step {records[r][0]}, {now - records[r][1]:.0f} s ago)" for r in behind
        )
        note = (
            f"stalled: {described}; the others reached step {max(s for s, _ in records.values())}. "
            f"Where it hangs: py-spy dump --pid <its pid>; per-rank records in {self._dir}"
        )
        exception.add_note(note)
        log.error("rank %d: %s", trainer.global_rank, note)
        launcher = getattr(trainer.strategy, "launcher", None)
        if trainer.global_rank == 0 and launcher is not None and getattr(launcher, "procs", None):
            # Lightning's launcher started the other ranks as child processes: a stuck one would outlive this one
            launcher.kill(signal.SIGKILL)
