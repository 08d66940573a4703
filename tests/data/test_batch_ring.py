"""Loader workers reuse shared-memory slots: same batches, no aliasing, bounded segments, no hang."""

from __future__ import annotations

import gc
import itertools
import threading
import time

import pytest
import torch
from support.shards import index_of, write_shards

from animatex_train.data import batch_ring
from animatex_train.data.batch_ring import BatchRing, WorkerSlots
from animatex_train.data.epoch_plan import DataIndex, Layout
from animatex_train.data.loader import ShardStreamLoader
from animatex_train.data.sample_assembly import WindowConfig
from animatex_train.data.stream import ShardStream, StreamSettings


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> DataIndex:
    return index_of(write_shards(tmp_path_factory.mktemp("ring"), num_shards=4, per_shard=12, size=(64, 48)))


def loader(index: DataIndex, workers: int, layout_workers: int = 1) -> ShardStreamLoader:
    layout = Layout(world_size=1, workers=layout_workers, batch_size=2, shuffle_buffer=4, seed=3)
    stream = ShardStream(StreamSettings(index, layout, 0, WindowConfig(num_frames=4), clip_dim=8))
    return ShardStreamLoader(stream, num_workers=workers)


def same(x, y) -> bool:
    return x.keys == y.keys and all(
        torch.equal(getattr(x, name), getattr(y, name))
        for name in ("latent_mean", "latent_std", "driving_clip", "ipi_keypoints", "pose_crops", "pose_boxes",
                     "ref_image", "valid")  # fmt: skip
    )


def test_slot_batches_equal_in_process_batches_while_all_are_held(index, monkeypatch):
    """Holding every batch of the epoch (slots are reused underneath) changes none of them, and the worker
    keeps at most ``prefetch + 2`` segments however many batches it sends."""
    segments_sent = []
    receive = BatchRing.receive

    def counting(self, ref):
        segments_sent.append(ref.segment is not None)
        return receive(self, ref)

    monkeypatch.setattr(BatchRing, "receive", counting)
    reference = list(loader(index, workers=0))
    held = list(loader(index, workers=1))  # one worker, the same layout: the same plan
    assert len(held) == len(reference) == 24
    assert all(same(x, y) for x, y in zip(held, reference, strict=True))
    assert all(not batch.latent_mean.is_shared() for batch in held)  # copies, never views of a slot
    assert len(segments_sent) == 24 and 1 <= sum(segments_sent) <= 4 + 2  # 4 slots, a couple of regrowths
    assert batch_ring._RINGS == {}  # closed at the end of the epoch


def test_two_workers_and_a_resume_through_the_ring(index):
    whole = list(loader(index, workers=2, layout_workers=2))
    first = loader(index, workers=2, layout_workers=2)
    part = list(itertools.islice(first, 5))
    state = first.state_dict()
    resumed = loader(index, workers=2, layout_workers=2)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert all(same(x, y) for x, y in zip(part + rest, whole, strict=True))


def test_abandoned_iteration_stops_its_thread_and_ring(index):
    before = threading.active_count()
    iterator = iter(loader(index, workers=1))
    next(iterator)
    assert len(batch_ring._RINGS) == 1
    del iterator
    gc.collect()
    deadline = time.monotonic() + 30
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before and batch_ring._RINGS == {}


def test_a_worker_whose_slots_never_come_back_falls_back_to_fresh_memory(caplog):
    import multiprocessing

    ring = BatchRing.open(1, multiprocessing, pin=False)
    try:
        slots = WorkerSlots(ring.handle(max_slots=2), worker=0, wait_s=0.01)
        a, ref_a = slots.acquire(1000)
        b, ref_b = slots.acquire(3 << 20)  # bigger than one MiB-rounded slot: its own segment
        assert ref_a.segment is not None and ref_b.segment is not None and ref_a.slot != ref_b.slot
        fresh, ref = slots.acquire(1000)  # both slots out, none released
        assert ref is None and fresh.is_shared() and not fresh.any() and "no shared-memory slot" in caplog.text
        a.fill_(7)
        assert torch.equal(ring.receive(ref_a), torch.full((1000,), 7, dtype=torch.uint8))  # copies, releases
        again, ref_again = slots.acquire(500)
        assert ref_again.slot == ref_a.slot and ref_again.segment is None  # the trainer already maps it
        assert again.data_ptr() == a.data_ptr()
        slots.free.append(ref_b.slot)
        big, ref_big = slots.acquire(8 << 20)  # grows: a new segment, sent again
        assert ref_big.slot == ref_b.slot and ref_big.segment is not None and big.numel() == 8 << 20
    finally:
        ring.close()
    with pytest.raises(RuntimeError, match="does not hold"):
        batch_ring.receive(batch_ring.RingRef("gone", 0, 0, 10, None))


def test_receiving_threads_are_stopped_and_joined_at_exit(index):
    """At interpreter exit a daemon thread still inside torch's C++ code aborts the process ("terminate called
    without an active exception", seen after Lightning fits that stop at max_steps with the last iterator
    alive); the exit hook stops and joins every receiving thread first."""
    from animatex_train.data import loader as loader_module

    iterator = iter(loader(index, workers=1))
    next(iterator)
    threads = [thread for thread, _ in loader_module._THREADS if thread.is_alive()]
    assert threads
    loader_module._stop_receiving_threads()
    assert not any(thread.is_alive() for thread in threads)
    del iterator
