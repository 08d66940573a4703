"""The training DataLoader: a stateful, exactly resumable view of a ``ShardStream``.

Lightning saves ``state_dict()`` in every checkpoint and calls ``load_state_dict()`` before the first
``iter()`` of a resumed run (its ``_Stateful`` loader protocol). Because ``__len__`` is defined,
Lightning fetches a batch only when a step needs it, so "batches yielded" is "batches consumed" at
checkpoint time; the position is therefore just ``(epoch, batches yielded)`` plus the layout, and the
workers rebuild everything else from the deterministic epoch plan. Every rank consumes the same number
of batches in lockstep, so rank 0's saved position is every rank's.

Workers are not persistent: each epoch's workers are started with that epoch's position (a persistent
worker would keep a stale copy of it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import asdict

from torch.utils.data import DataLoader

from animatex_train.data.loading.batch import Batch
from animatex_train.data.loading.epoch_plan import Layout, PlanSegment, batches_per_rank
from animatex_train.data.loading.stream import ShardStream, StreamPosition

STATE_VERSION = 1
WATCHDOG_GRACE_S = 15.0  # after data.loader_timeout_s: the loader's own timeout gets the first word


class ResumeError(RuntimeError):
    """A saved loader position that cannot be continued with this data; the message says why and what to do."""


class LoaderStallError(RuntimeError):
    """A loader worker produced nothing for ``data.loader_timeout_s``; it was killed (the message names it)."""


def _kill_workers(iterator: object) -> tuple[str, list[int]]:
    """SIGKILL a DataLoader iterator's workers; (the worker whose batch was awaited, the pids killed).

    SIGKILL, because a worker that cannot act on SIGTERM (stopped, or in uninterruptible sleep on a hung
    filesystem) kept the process alive for ever at shutdown (docs/reliability.md, probe D3).
    """
    workers = list(getattr(iterator, "_workers", []))
    info = getattr(iterator, "_task_info", {}).get(getattr(iterator, "_rcvd_idx", -1), ())
    waited = f"worker {info[0]} (pid {workers[info[0]].pid})" if info and info[0] < len(workers) else "a worker"
    pids = [w.pid for w in workers if w.is_alive()]
    if getattr(iterator, "_worker_pids_set", False):
        # torch's SIGCHLD handler would otherwise raise "worker killed by signal" in the main thread at a random
        # point, racing our error; the iterator's own shutdown deregisters its workers the same way
        from torch.utils.data._utils.signal_handling import _remove_worker_pids

        _remove_worker_pids(id(iterator))
        iterator._worker_pids_set = False
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return waited, pids


def _stall_message(waited: str, timeout: object, pids: list[int]) -> str:
    return (
        f"data loader: {waited} produced no batch for {timeout} s (data.loader_timeout_s); its workers (pids "
        f"{pids}) were killed. A worker hangs on its storage or on a sample: check the shards' filesystem, or "
        "raise data.loader_timeout_s for slow storage"
    )


class _Counting:
    """Counts the batches handed out. An iterator object, not a generator: a suspended generator would keep the
    last batch alive until the next ``next()``."""

    def __init__(self, iterator: Iterator[Batch], position: StreamPosition):
        self.iterator, self.position = iterator, position

    def __iter__(self) -> _Counting:
        return self

    def __next__(self) -> Batch:
        timeout = getattr(self.iterator, "_timeout", 0)
        # DataLoader's own timeout covers waiting for a batch's message only; receiving its tensors (their file
        # descriptors come from the worker) blocks with no limit when the worker is frozen. The watchdog kills the
        # workers a little after the timeout, which ends that wait too.
        stalled: list[tuple[str, list[int]]] = []
        watchdog = None
        if timeout and getattr(self.iterator, "_workers", None):

            def fire() -> None:
                stalled.append(("a worker", []))  # flagged before the kill wakes the main thread
                stalled[0] = _kill_workers(self.iterator)

            watchdog = threading.Timer(timeout + WATCHDOG_GRACE_S, fire)
            watchdog.daemon = True
            watchdog.start()
        try:
            batch = next(self.iterator)
        except BaseException as error:
            if not stalled and isinstance(error, RuntimeError) and "DataLoader timed out" in str(error):
                stalled.append(_kill_workers(self.iterator))
            if stalled:
                raise LoaderStallError(_stall_message(stalled[0][0], timeout, stalled[0][1])) from error
            raise
        finally:
            if watchdog is not None:
                watchdog.cancel()
        self.position.batches_yielded += 1
        return batch


class ShardStreamLoader(DataLoader):
    """Batches of one rank; ``len()`` is the batches of the current epoch (equal on every rank)."""

    def __init__(
        self,
        dataset: ShardStream,
        num_workers: int,
        pin_memory: bool = False,
        timeout_s: float = 0.0,
        prefetch_factor: int | None = None,
        repeat_first_epoch: bool = False,
    ):
        super().__init__(
            dataset,
            batch_size=None,  # batches are collated in the workers
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=False,
            timeout=timeout_s if num_workers > 0 else 0.0,
            prefetch_factor=prefetch_factor if num_workers > 0 else None,
        )
        self.stream = dataset
        self.repeat_first_epoch = repeat_first_epoch  # validation: the same samples every time

    def _part_length(self) -> int:
        s, pos = self.stream.settings, self.stream.position
        return batches_per_rank(s.index, pos.epoch, s.window.span, pos.history, s.layout)

    def __len__(self) -> int:
        pos = self.stream.position
        consumed_before = sum(segment.batches_yielded for segment in pos.history)
        return consumed_before + self._part_length()

    @property
    def epoch(self) -> int:
        return self.stream.position.epoch

    def __iter__(self) -> Iterator[Batch]:
        pos = self.stream.position
        if self.repeat_first_epoch:
            pos.epoch, pos.history, pos.batches_yielded = 0, [], 0
        elif pos.batches_yielded >= self._part_length():  # the current epoch is used up: start the next one
            pos.epoch, pos.history, pos.batches_yielded = pos.epoch + 1, [], 0
        return _Counting(super().__iter__(), pos)

    def state_dict(self) -> dict:
        pos, s = self.stream.position, self.stream.settings
        return {
            "version": STATE_VERSION,
            "epoch": pos.epoch,
            "history": [{"layout": asdict(h.layout), "batches_yielded": h.batches_yielded} for h in pos.history],
            "batches_yielded": pos.batches_yielded,
            "layout": asdict(s.layout),
            "data_fingerprint": s.index.fingerprint(),
        }

    def load_state_dict(self, state: dict) -> None:
        s, pos = self.stream.settings, self.stream.position
        if state.get("version") != STATE_VERSION:
            raise ResumeError(f"data loader state version {state.get('version')} is not {STATE_VERSION}")
        if state["data_fingerprint"] != s.index.fingerprint():
            raise ResumeError(
                "the training data changed since the checkpoint (other shards, samples or weights); an exact resume "
                "is impossible. Restore the old manifests, or start from the checkpoint's weights with a new run"
            )
        saved = Layout(**state["layout"])
        if saved.seed != s.layout.seed:
            raise ResumeError(f"data.seed changed from {saved.seed} to {s.layout.seed}; resume with the saved seed")
        pos.epoch = int(state["epoch"])
        pos.history = [PlanSegment(Layout(**h["layout"]), int(h["batches_yielded"])) for h in state["history"]]
        pos.batches_yielded = int(state["batches_yielded"])
        if saved != s.layout:
            # Another world size / worker count / batch size: the consumed part becomes history and the rest
            # of the epoch is re-cut for this layout, so no sample is repeated or lost within the epoch.
            pos.history.append(PlanSegment(saved, pos.batches_yielded))
            pos.batches_yielded = 0
