"""Reused shared-memory slots for the batches that loader workers hand to the training process.

Why by hand: a DataLoader worker passes each batch through a newly created shared-memory segment. The kernel
zeroes it, the worker then takes a page fault on every 4 KiB page it writes (shared memory gets no huge pages),
and the training process maps and unmaps it again. Measured on this project's 2-core VM for a paper-size batch
(9.4 MB): about 11 ms of CPU per batch, half of what our loader spends building the batch. Private memory does
not pay this (the allocator reuses freed pages), and neither PyTorch nor webdataset offers reusable worker
buffers, so the worker here keeps a few mapped segments ("slots") for the whole epoch and reuses them:

1. The training process creates a ``BatchRing`` for each iteration of the loader, before the workers start:
   an id and one release queue per worker, registered in this process.
2. A worker's ``WorkerSlots`` hands out buffers from at most ``max_slots`` segments, taking a slot again only
   once the training process has released it. A batch in a slot pickles as a small reference
   ``(ring id, worker, slot, bytes)``; the segment itself (one file descriptor) travels only with the first
   batch that uses it.
3. In the training process, unpickling copies the batch out of its slot into private memory (pinned memory
   when the loader pins, so this is the copy pinning makes anyway) and releases the slot at once. No tensor
   the training step sees ever aliases a slot, so reuse cannot change data under a reader.

If no slot comes back within ``wait_s`` (the training process stopped consuming), the worker falls back to a
fresh segment for that batch, as a DataLoader does; nothing blocks for ever.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
from dataclasses import dataclass, field

import torch

log = logging.getLogger(__name__)

_MIB = 1 << 20
_ids = itertools.count()
_RINGS: dict[str, BatchRing] = {}  # this process's rings (the training process side), by id


@dataclass(frozen=True)
class RingRef:
    """Which slot holds a batch; ``segment`` is the slot's memory, sent once per segment."""

    ring_id: str
    worker: int
    slot: int
    nbytes: int
    segment: torch.Tensor | None


@dataclass
class BatchRing:
    """The training-process side of one loader iteration's slots.

    Attributes:
        ring_id: unique in this process (pid and a counter).
        release: per worker, the queue that gives slots back.
        pin: copy received batches into pinned memory (the loader pins and CUDA is available).
    """

    ring_id: str
    release: list
    pin: bool = False
    segments: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)

    @staticmethod
    def open(num_workers: int, context, pin: bool) -> BatchRing:
        """A registered ring for ``num_workers`` workers started from multiprocessing ``context``."""
        ring = BatchRing(f"{os.getpid()}-{next(_ids)}", [context.Queue() for _ in range(num_workers)], pin)
        _RINGS[ring.ring_id] = ring
        return ring

    def handle(self, max_slots: int) -> RingHandle:
        """What the workers get (picklable into a starting worker process); each keeps up to ``max_slots``."""
        return RingHandle(self.ring_id, self.release, max_slots)

    def receive(self, ref: RingRef) -> torch.Tensor:
        """Copy a batch's bytes out of its slot and give the slot back; returns the private (or pinned) copy."""
        key = (ref.worker, ref.slot)
        if ref.segment is not None:
            self.segments[key] = ref.segment
        segment = self.segments.get(key)
        if segment is None:
            raise RuntimeError(f"loader batch in slot {key} of ring {self.ring_id} arrived before its segment")
        flat = torch.empty(ref.nbytes, dtype=torch.uint8, pin_memory=self.pin)
        flat.copy_(segment[: ref.nbytes])
        self.release[ref.worker].put(ref.slot)
        return flat

    def close(self) -> None:
        """Forget the slots (their memory goes once the workers have exited) and the queues."""
        if _RINGS.pop(self.ring_id, None) is None:
            return
        self.segments.clear()
        for q in self.release:
            q.cancel_join_thread()  # never wait at exit for slot numbers nobody reads any more
            q.close()


def receive(ref: RingRef) -> torch.Tensor:
    """The bytes of a batch sent from a slot, as memory of this process (see ``BatchRing.receive``)."""
    ring = _RINGS.get(ref.ring_id)
    if ring is not None:
        return ring.receive(ref)
    if ref.segment is None:
        raise RuntimeError(
            f"a loader batch refers to slot {ref.slot} of worker {ref.worker} of ring {ref.ring_id}, which this "
            "process does not hold; batches from a ShardStreamLoader can only be read by the process iterating it"
        )
    return ref.segment[: ref.nbytes].clone()


@dataclass(frozen=True)
class RingHandle:
    """The worker's view of a ring: its id, the release queues and how many slots a worker may keep."""

    ring_id: str
    release: list
    max_slots: int


class WorkerSlots:
    """A worker's slots: shared-memory segments reused for its batches (see the module docstring)."""

    def __init__(self, handle: RingHandle, worker: int, wait_s: float = 60.0):
        if handle.max_slots < 1:
            raise ValueError(f"max_slots must be >= 1, got {handle.max_slots}")
        self.handle, self.worker, self.max_slots, self.wait_s = handle, worker, handle.max_slots, wait_s
        self.segments: list[torch.Tensor] = []
        self.free: list[int] = []
        self.announced: set[int] = set()  # slots whose current segment the training process has been sent
        self.fresh_fallbacks = 0

    def acquire(self, nbytes: int) -> tuple[torch.Tensor, RingRef | None]:
        """``(buffer, ref)``: ``nbytes`` of shared memory with undefined contents, and the slot reference to pickle
        (None: a fresh zeroed segment outside the ring, after waiting ``wait_s`` for a slot in vain)."""
        self._drain(block=False)
        if not self.free and len(self.segments) < self.max_slots:
            self.segments.append(shared_segment(_capacity(nbytes)))
            self.free.append(len(self.segments) - 1)
        if not self.free and not self._drain(block=True):
            self.fresh_fallbacks += 1
            log.warning(
                "loader worker %d: no shared-memory slot was released within %.0f s; using a fresh segment "
                "(%d so far). The training process is not consuming batches",
                self.worker, self.wait_s, self.fresh_fallbacks,
            )  # fmt: skip
            return shared_segment(nbytes), None
        slot = self.free.pop()
        if self.segments[slot].numel() < nbytes:  # grow: a fresh segment, announced with its first batch
            self.segments[slot] = shared_segment(_capacity(nbytes))
            self.announced.discard(slot)
        send = None if slot in self.announced else self.segments[slot]
        self.announced.add(slot)
        return self.segments[slot][:nbytes], RingRef(self.handle.ring_id, self.worker, slot, nbytes, send)

    def _drain(self, block: bool) -> bool:
        """Collect released slots; with ``block``, wait up to ``wait_s`` for one. Whether any came back."""
        got = False
        release = self.handle.release[self.worker]
        while True:
            try:
                slot = release.get(timeout=self.wait_s) if block and not got else release.get_nowait()
            except queue.Empty:
                return got
            self.free.append(int(slot))
            got = True


def _capacity(nbytes: int) -> int:
    """Bytes of a new slot for a batch of ``nbytes``: a quarter more, in whole MiB (batch sizes vary with the
    pose crops, and a slot too small for a later batch is replaced)."""
    return -(-nbytes * 5 // 4 // _MIB) * _MIB


def shared_segment(nbytes: int) -> torch.Tensor:
    """A new shared-memory segment of ``nbytes`` (zeroed by the kernel) as a flat uint8 tensor."""
    storage = torch.UntypedStorage._new_shared(nbytes)
    return torch.empty(0, dtype=torch.uint8).set_(storage, 0, (nbytes,))
