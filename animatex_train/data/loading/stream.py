"""The iterable dataset each loader worker runs: read its planned samples, assemble them, yield batches.

A worker rebuilds the epoch plan (``epoch_plan``), takes its own stream, skips the batches consumed
before a resume, reads its segments sequentially through ``shard_reader`` and emits batches in the
planned (shuffle-buffer) order, holding at most a buffer's worth of read-but-not-emitted samples.

Bad data never stops the epoch or unbalances ranks: an unreadable shard, a truncated tail, a sample
with a missing or malformed member, or a key that does not match the manifest becomes a placeholder
slot (``valid=False``, loss masked out) and one warning naming the shard and the key.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from torch.utils.data import IterableDataset, get_worker_info

from animatex_train.data.epi.anchor_pool import AnchorPool
from animatex_train.data.epi.transform import EPIConfig, EPITransform
from animatex_train.data.format.schema import decode_clip
from animatex_train.data.format.shard_reader import ShardReadError, iter_samples
from animatex_train.data.loading.batch import Batch, allocate_batch, clear_row
from animatex_train.data.loading.epoch_plan import (
    DataIndex,
    Layout,
    PlanSegment,
    SampleRef,
    consumed_batches_of_worker,
    plan_epoch,
)
from animatex_train.data.loading.sample_assembly import PreparedSample, WindowConfig, prepare_sample, write_sample

log = logging.getLogger(__name__)


@dataclass
class StreamPosition:
    """Where the next iteration starts: ``epoch``, earlier parts of it, and batches consumed in this part."""

    epoch: int = 0
    history: list[PlanSegment] = field(default_factory=list)
    batches_yielded: int = 0


@dataclass(frozen=True)
class StreamSettings:
    """Everything a worker needs (pickled into each worker process).

    Attributes:
        index: the datasets.
        layout: world size, workers per rank, batch size, shuffle buffer, seed.
        rank: this process's rank.
        window: frames per sample and stride.
        clip_dim: CLIP width (placeholder shapes).
        epi: explicit pose indicator config, or None to draw poses untransformed (validation).
        anchor_pool: path of the EPI anchor pool, if the EPI config needs one.
        allow_remote_urls: allow ``pipe:``/remote shard URLs.
    """

    index: DataIndex
    layout: Layout
    rank: int
    window: WindowConfig
    clip_dim: int
    epi: EPIConfig | None = None
    anchor_pool: str | None = None
    allow_remote_urls: bool = False


class ShardStream(IterableDataset):
    """Yields the ``Batch`` es of one rank's worker for the epoch in ``position``."""

    def __init__(self, settings: StreamSettings):
        super().__init__()
        self.settings = settings
        self.position = StreamPosition()
        self._epi: EPITransform | None = None
        self._shard_keys: dict[tuple[int, int], frozenset[str]] = {}  # manifest keys per shard, built when needed

    def _transform(self) -> EPITransform | None:
        s = self.settings
        if s.epi is None or not s.epi.does_anything:
            return None
        if self._epi is None:  # once per worker process
            anchors = AnchorPool.load(s.anchor_pool) if s.anchor_pool else None
            self._epi = EPITransform(s.epi, anchors, s.layout.seed)
        return self._epi

    def __iter__(self) -> Iterator[Batch]:
        s, pos = self.settings, self.position
        info = get_worker_info()
        worker = info.id if info is not None else 0
        workers = info.num_workers if info is not None else 1
        if workers != s.layout.workers:
            raise RuntimeError(f"the loader layout expects {s.layout.workers} worker streams per rank, got {workers}")
        streams = plan_epoch(s.index, pos.epoch, s.window.span, pos.history, s.layout)
        # A DataLoader always asks worker 0 first; after a resume the next batch belongs to the stream
        # (batches_yielded mod workers), so loader worker w plays that stream's role, and so on in turn.
        role = (worker + pos.batches_yielded) % workers
        plan = streams[s.rank * workers + role]
        batches = plan.batches[consumed_batches_of_worker(pos.batches_yielded, workers, role) :]
        needed = {(ref.occurrence, ref.index) for batch in batches for ref in batch}
        readers = {bucket: self._read_segment(segment, needed) for bucket, segment in plan.segments.items()}
        pending: dict[tuple[int, int], dict] = {}
        epi = self._transform()
        for batch in batches:
            prepared = []
            for ref in batch:
                while (ref.occurrence, ref.index) not in pending:
                    got_ref, sample = next(readers[ref.bucket])
                    pending[(got_ref.occurrence, got_ref.index)] = sample
                prepared.append(self._prepare(ref, pending.pop((ref.occurrence, ref.index)), pos.epoch, epi))
            # Every batch is one resolution bucket, allocated at its exact size once its samples' pose boxes are
            # known; in a worker process it lives in shared memory, which DataLoader hands over without a copy.
            boxes = [None if isinstance(p, str) else p.pose_boxes for p in prepared]
            out = allocate_batch(
                len(batch), s.window.num_frames, batch[0].bucket, s.clip_dim, shared=info is not None, pose_boxes=boxes
            )
            for row, (ref, sample) in enumerate(zip(batch, prepared, strict=True)):
                self._write(ref, sample, out, row)
            yield out

    def _read_segment(self, segment: list[SampleRef], needed: set[tuple[int, int]]):
        """Yield ``(ref, members | error message)`` for the needed samples of a segment, in read order."""
        s = self.settings
        i = 0
        while i < len(segment):
            first = segment[i]
            run = [first]
            while i + len(run) < len(segment) and segment[i + len(run)].occurrence == first.occurrence:
                run.append(segment[i + len(run)])
            i += len(run)
            url = s.index.datasets[first.dataset][first.shard].url
            remaining = [ref for ref in run if (ref.occurrence, ref.index) in needed]
            if not remaining:
                continue
            yield from self._read_run(url, remaining)

    def _read_run(self, url: str, refs: list[SampleRef]):
        """Yield ``(ref, members | error)`` for ``refs`` (samples of one shard, in tar order), matched by key.

        Matching by key, not by position in the tar, keeps one foreign or duplicate sample group (an unknown key,
        a key seen before, a traversal member) from shifting every later sample of the shard onto the wrong plan
        entry: such groups are skipped with a warning naming shard and key, and nothing else is lost.
        """
        wanted: dict[str, list[SampleRef]] = {}
        for ref in refs:
            wanted.setdefault(ref.key, []).append(ref)
        served: set[str] = set()
        error = None
        try:
            for key, members in iter_samples(url, self.settings.allow_remote_urls):
                if key in served or key not in wanted:
                    # named at once: the consumer stops pulling after its last needed sample
                    if key in served:
                        log.warning("shard %r: skipped a second sample group with key %r (duplicate)", url, key)
                    elif not self._planned(refs[0], key):
                        log.warning(
                            "shard %r: skipped sample group %r, not in the shard's manifest entry (foreign)", url, key
                        )
                    continue
                served.add(key)
                for ref in wanted.pop(key):
                    yield ref, {"__key__": key, "__url__": url, **members}
                if not wanted:
                    break
        except ShardReadError as failure:
            error = str(failure)
        if not wanted:
            return
        rest = [ref for ref in refs if ref.key in wanted]
        error = error or f"shard {url!r} has no sample(s) {[r.key for r in rest][:3]} (it ended before them)"
        log.warning("%s; %d planned sample(s) of it become placeholders", error, len(rest))
        for missing in rest:
            yield missing, error

    def _planned(self, ref: SampleRef, key: str) -> bool:
        """Whether ``key`` is one of the manifest keys of ``ref``'s shard (a planned sample, just not needed now)."""
        shard = self.settings.index.datasets[ref.dataset][ref.shard]
        keys = self._shard_keys.get((ref.dataset, ref.shard))
        if keys is None:
            keys = self._shard_keys[(ref.dataset, ref.shard)] = frozenset(shard.keys)
        return key in keys

    def _prepare(self, ref: SampleRef, raw: dict | str, epoch: int, epi: EPITransform | None) -> PreparedSample | str:
        """The sample's choices and pose boxes, or the reason it becomes a placeholder."""
        s = self.settings
        if not isinstance(raw, dict):
            return raw
        try:
            # Latent values are checked for the frames the sample uses, when they are copied (write_sample).
            record = decode_clip(raw, check_values=False)
            return prepare_sample(
                record, f"{ref.key}@{ref.occurrence}", epoch, s.layout.seed, s.window, epi, ref.bucket, s.clip_dim
            )
        except (ValueError, KeyError, OSError) as error:  # SampleError/KeypointError are ValueErrors
            return f"shard {raw.get('__url__', '?')!r}, sample {ref.key!r}: {error}"

    def _write(self, ref: SampleRef, sample: PreparedSample | str, out: Batch, row: int) -> None:
        if not isinstance(sample, str):
            try:
                write_sample(sample, out, row)
                return
            except (ValueError, KeyError, OSError) as error:
                url = self.settings.index.datasets[ref.dataset][ref.shard].url
                sample = f"shard {url!r}, sample {ref.key!r}: {error}"
        log.warning("skipping unreadable sample (placeholder, loss masked): %s", sample)
        clear_row(out, row, ref.key)
