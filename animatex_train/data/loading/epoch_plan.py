"""The deterministic plan of an epoch: which sample every rank and worker reads, in which order.

The plan is computed from the dataset manifests alone (no data is read), from ``(seed, epoch)`` and the
loader layout (world size, workers per rank, batch size, shuffle-buffer size). That is what makes a
resume exact (docs/reliability.md §4, "data position"): a checkpoint stores how many batches each rank
consumed, and the same plan is rebuilt and continued. WebDataset's own resampling cannot do this.

Construction of epoch ``e``:

1. Every dataset of the mixture contributes its shards ``weight`` times (the fractional part takes a
   seeded subset of shards); all shard occurrences are permuted with ``(seed, e)``, so ranks do not keep
   the same shards every epoch (webdataset's ``shardshuffle`` shuffles only within a worker).
2. Samples are listed in shard order and grouped by resolution bucket; samples shorter than the
   training window are left out (logged once).
3. Each bucket's sequence is cut into ``world_size * workers`` equal contiguous segments, one per
   stream ``rank * workers + worker``; contiguous cuts keep reads sequential (a stream starts
   mid-shard at most once per bucket). The few samples past the last full segment wait for another epoch.
4. A stream emits its segment through a seeded shuffle buffer simulated on indices, cuts it into
   batches (a partial last batch waits for another epoch too) and interleaves its buckets' batches.

Every stream of every rank has the same number of batches, so ranks never wait for each other at the
end of an epoch. If the world size or worker count changes on resume, the samples already consumed
are removed and the rest of the epoch is re-cut for the new layout: no sample is lost or repeated.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ShardInfo:
    """What the plan needs to know about one shard (from the dataset manifest).

    Attributes:
        url: where to read it (a path, or any URL ``webdataset.gopen`` opens).
        keys: sample keys in tar order.
        num_frames: stored frames of each sample, same order.
        height: pixel height of the shard's resolution bucket.
        width: pixel width of the same.
    """

    url: str
    keys: tuple[str, ...]
    num_frames: tuple[int, ...]
    height: int
    width: int


@dataclass(frozen=True)
class DataIndex:
    """A weighted mixture of datasets; ``weights[d]`` = passes over dataset ``d`` per epoch."""

    datasets: tuple[tuple[ShardInfo, ...], ...]
    weights: tuple[float, ...]

    def fingerprint(self) -> str:
        """Changes whenever the shards, their samples or the weights change."""
        h = hashlib.blake2b(digest_size=12)
        for shards, weight in zip(self.datasets, self.weights, strict=True):
            h.update(repr(weight).encode())
            for s in shards:
                h.update(f"{s.url}|{s.height}x{s.width}|{','.join(s.keys)}".encode())
        return h.hexdigest()


@dataclass(frozen=True)
class Layout:
    """How the samples are spread: ``world_size * workers`` streams, each cut into batches."""

    world_size: int
    workers: int
    batch_size: int
    shuffle_buffer: int
    seed: int

    @property
    def num_streams(self) -> int:
        return self.world_size * self.workers


@dataclass(frozen=True)
class SampleRef:
    """One planned sample: occurrence ``occurrence`` of a shard in this epoch, position ``index`` in it."""

    occurrence: int
    dataset: int
    shard: int
    index: int
    key: str
    bucket: tuple[int, int]


def rng_for(*parts: object) -> np.random.Generator:
    """A generator seeded only by ``parts`` (never by process, rank or time)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=16).digest()
    return np.random.default_rng(np.frombuffer(digest, dtype=np.uint32))


def epoch_sequences(index: DataIndex, seed: int, epoch: int, min_frames: int) -> dict[tuple[int, int], list[SampleRef]]:
    """Steps 1-2: every bucket's sample sequence for the epoch (before it is cut into streams)."""
    occurrences: list[tuple[int, int]] = []
    for d, (shards, weight) in enumerate(zip(index.datasets, index.weights, strict=True)):
        passes, fraction = int(weight), weight - int(weight)
        for p in range(passes):
            occurrences += [(d, s) for s in rng_for("pass", seed, epoch, d, p).permutation(len(shards))]
        if fraction > 0:
            subset = rng_for("fraction", seed, epoch, d).permutation(len(shards))[
                : int(np.ceil(fraction * len(shards)))
            ]
            occurrences += [(d, s) for s in subset]
    order = rng_for("shards", seed, epoch).permutation(len(occurrences))
    sequences: dict[tuple[int, int], list[SampleRef]] = defaultdict(list)
    for occurrence, position in enumerate(order):
        d, s = occurrences[position]
        shard = index.datasets[d][s]
        bucket = (shard.height, shard.width)
        for i, (key, frames) in enumerate(zip(shard.keys, shard.num_frames, strict=True)):
            if frames >= min_frames:
                sequences[bucket].append(SampleRef(occurrence, d, int(s), i, key, bucket))
    return dict(sorted(sequences.items()))


def _shuffle_buffer(samples: list[SampleRef], size: int, rng: np.random.Generator) -> list[SampleRef]:
    """Emission order of a streaming shuffle buffer of ``size`` fed ``samples`` in order."""
    if size <= 1:
        return list(samples)
    buffer: list[SampleRef] = []
    out: list[SampleRef] = []
    for sample in samples:
        buffer.append(sample)
        if len(buffer) >= size:
            j = int(rng.integers(len(buffer)))
            buffer[j], buffer[-1] = buffer[-1], buffer[j]
            out.append(buffer.pop())
    out += [buffer[j] for j in rng.permutation(len(buffer))]
    return out


@dataclass(frozen=True)
class StreamPlan:
    """What one stream (a worker of a rank) does in an epoch.

    Attributes:
        batches: the batches it yields, in order.
        segments: per bucket, the samples it reads, in read (shard) order; the batches draw from them.
    """

    batches: list[list[SampleRef]]
    segments: dict[tuple[int, int], list[SampleRef]]


def cut_streams(
    sequences: dict[tuple[int, int], list[SampleRef]], layout: Layout, epoch: int, salt: int = 0
) -> list[StreamPlan]:
    """Steps 3-4: one ``StreamPlan`` per stream ``rank * workers + worker``."""
    per_stream_bucket_batches: list[dict[tuple[int, int], list[list[SampleRef]]]] = [
        {} for _ in range(layout.num_streams)
    ]
    segments: list[dict[tuple[int, int], list[SampleRef]]] = [{} for _ in range(layout.num_streams)]
    for bucket, sequence in sequences.items():
        length = len(sequence) // layout.num_streams
        for s in range(layout.num_streams):
            segment = sequence[s * length : (s + 1) * length]
            segments[s][bucket] = segment
            emitted = _shuffle_buffer(
                segment, layout.shuffle_buffer, rng_for("buffer", layout.seed, epoch, salt, s, bucket)
            )
            count = len(emitted) // layout.batch_size
            per_stream_bucket_batches[s][bucket] = [
                emitted[i * layout.batch_size : (i + 1) * layout.batch_size] for i in range(count)
            ]
    streams = []
    for s, bucket_batches in enumerate(per_stream_bucket_batches):
        labels = [bucket for bucket, batches in bucket_batches.items() for _ in batches]
        labels = [labels[i] for i in rng_for("buckets", layout.seed, epoch, salt, s).permutation(len(labels))]
        cursors = dict.fromkeys(bucket_batches, 0)
        ordered = []
        for bucket in labels:
            ordered.append(bucket_batches[bucket][cursors[bucket]])
            cursors[bucket] += 1
        streams.append(StreamPlan(ordered, segments[s]))
    return streams


def consumed_batches_of_worker(batches_yielded: int, workers: int, worker: int) -> int:
    """How many of worker ``worker``'s batches are among the first ``batches_yielded`` of its rank.

    A ``DataLoader`` over an iterable dataset takes batches from its workers round-robin, in order.
    """
    return max(0, (batches_yielded - worker + workers - 1) // workers)


@dataclass(frozen=True)
class PlanSegment:
    """A part of an epoch run under one layout: ``batches_yielded`` batches per rank were consumed."""

    layout: Layout
    batches_yielded: int


def plan_epoch(
    index: DataIndex, epoch: int, min_frames: int, history: list[PlanSegment], layout: Layout
) -> list[StreamPlan]:
    """The streams of the current part of ``epoch``, after the parts in ``history`` were consumed.

    ``history`` is empty at the start of an epoch. When a run resumes with the layout it stopped with,
    the caller continues the previous part (skipping its consumed batches) instead of calling this.
    """
    sequences = epoch_sequences(index, layout.seed, epoch, min_frames)
    for part, segment in enumerate(history):
        streams = cut_streams(sequences, segment.layout, epoch, salt=part)
        consumed: set[tuple[int, int]] = set()
        for s, stream in enumerate(streams):
            worker = s % segment.layout.workers
            done = consumed_batches_of_worker(segment.batches_yielded, segment.layout.workers, worker)
            for batch in stream.batches[:done]:
                consumed.update((ref.occurrence, ref.index) for ref in batch)
        sequences = {
            bucket: [ref for ref in refs if (ref.occurrence, ref.index) not in consumed]
            for bucket, refs in sequences.items()
        }
    return cut_streams(sequences, layout, epoch, salt=len(history))


def batches_per_rank(index: DataIndex, epoch: int, min_frames: int, history: list[PlanSegment], layout: Layout) -> int:
    """Batches every rank yields in the current part of the epoch (equal on all ranks)."""
    streams = plan_epoch(index, epoch, min_frames, history, layout)
    return layout.workers * len(streams[0].batches) if streams else 0
