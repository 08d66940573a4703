"""Our streaming loader vs decode-on-the-fly, on the same clips and the same core; and the data wait.

    python benchmarks/loader_vs_baseline.py [--clips 6] [--frames 33] [--height 768 --width 512]

Ends with ``speedup_per_core: <float> data_wait_fraction: <float>`` (goals: >= 25, <= 0.005); the speedup
there is the one through worker processes (2b below), as both loaders run in training.

What is measured
1. ``--clips`` synthetic dancing-character clips are rendered at the training resolution (paper setting:
   32 generated frames + 1 reference, 768x512 pixels, 96x64 latents, 1024-d CLIP). The baseline gets each
   clip's video and rendered-pose video as H.264 mp4s; our loader gets one WebDataset shard holding each
   clip ``--copies`` times under distinct keys (the shard schema: float16 latent posterior, CLIP features,
   keypoints, reference JPEGs), so an epoch is long enough for a steady data-wait measurement.
2. Per core, single-threaded (torch, OpenCV, FFmpeg: 1 thread), alternating rounds so both sides see the
   same machine load, charged CPU time (user + system, so page faults count) per sample; CPU time does not
   depend on what else the machine runs (wall-clock rates are printed too). Two ways:
   a. each loader in this process (no worker processes);
   b. each through one DataLoader worker process, as training runs them (the main figure): the CPU time of
      the worker and of this process is charged, so a batch also pays for its trip to the training
      process. Both go through DataLoader's own transport: ours is written into a new shared-memory buffer
      per batch (``allocate_batch``); the baseline's ``DataLoader(batch_size=1, num_workers=1)`` default
      collate copies its float tensors into a new shared-memory segment per sample, as peers' loaders do.
      Each pass is one epoch, so a worker start (~50 ms here) is charged per 6 baseline samples and per 96
      of ours. The difference to (a) is the cost of moving batches between processes: with a new segment
      per batch about 1.1 ms per MB on a 2-core VM, in kernel zeroing and page faults.
   Our sample: read and decode the shard sample, draw the window and the reference, copy and check the
   window's VAE posterior (mean, std), run the explicit pose indicator (realign + rescale), draw 33 pose
   images at 768x512 (each frame's box around its drawn pixels, ``pose_render.pose_label_boxes``), decode
   the reference JPEG, all written into the step's batch. The batch size per sample is printed.
3. Data wait: our loader with 2 worker processes feeds a consumer that sleeps for the predicted H100 step
   time (3 x forward FLOPs of the paper model at 35% MFU, docs/performance.md §2.5) per batch of 1 (the
   H100 recipe uses 2 per GPU: twice the step, half the fraction). The fraction is the time spent in
   ``next()`` over all batches of one epoch but its first, whose wait (worker start-up, once per epoch) is
   printed separately: epochs of real runs are thousands of steps. The consumer holds each batch through its
   step, as training does; releasing it afterwards is timed and printed apart. On a GPU node
   ``pin_memory=True`` receives batches in DataLoader's pin-memory thread; here (no pin memory) the main
   thread receives them in ``next()``, so that cost counts as waiting.

Fairness, in both directions
* For the baseline: its source videos are already at the training resolution and frame rate (peers decode
  larger videos and skip frames by their ``sample_rate``, and crop-resize every frame), and its per-frame
  float conversion is vectorised; each of these makes it cheaper than the real thing. Its VAE and CLIP
  encoders are NOT charged in the main figure: peers run them on the GPU in the training step (about
  0.16 s of H100 time per sample for SD-VAE + ViT-H, docs/performance.md §5.3), which is not CPU work;
  the line "with tiny encoders on this CPU" shows how a CPU charge would change the ratio, for reference.
* Against us: the baseline decodes with a maintained library (PyAV/FFmpeg) exactly the frames a decord
  ``VideoReader`` would (forward decoding, one re-decode from the keyframe for a reference behind the
  window), with no extra passes. Our loader does more work than the baseline (the explicit pose indicator
  and drawing the poses from keypoints, which the baseline reads pre-drawn) and hands over complete
  batches, every byte written. Three things happen on the device
  instead of in our loader, like the baseline's encoders: putting the pose-label crops back into blank
  images (one masked scatter, ``Batch.pose_labels``; the crops hold every drawn pixel, tested bit for bit),
  the lookup of the palette labels into RGB (``pose_render.POSE_PALETTE``: the labels are exactly the RGB
  images at a third of the bytes) and the posterior draw ``mean + std * N(0, 1)`` (``Batch.sample_posterior``;
  0.8 M normals, microseconds on a GPU, 4-5 ms of a CPU core). Our offline preprocessing (``animatex-train
  prepare``: VAE/CLIP encoding, pose extraction) is not charged either, like the baseline's encoders; it runs
  once per dataset, not once per sample per epoch.
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")  # before numpy/torch start thread pools: one core, one thread

import argparse  # noqa: E402
import io  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from pathlib import Path  # noqa: E402

import animatex_train  # noqa: E402, F401  (torchvision compat shim)

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from loader_baseline import DecodeOnTheFlyDataset, encode_batch  # noqa: E402

from animatex_train.data.epi.anchor_pool import AnchorPool  # noqa: E402
from animatex_train.data.epi.transform import EPIConfig  # noqa: E402
from animatex_train.data.format.schema import ClipMeta, ClipRecord, encode_clip  # noqa: E402
from animatex_train.data.format.video import write_mp4  # noqa: E402
from animatex_train.data.loading.epoch_plan import DataIndex, Layout, ShardInfo  # noqa: E402
from animatex_train.data.loading.loader import ShardStreamLoader  # noqa: E402
from animatex_train.data.loading.sample_assembly import WindowConfig  # noqa: E402
from animatex_train.data.loading.stream import ShardStream, StreamSettings  # noqa: E402
from animatex_train.data.pose.render import render_pose  # noqa: E402
from animatex_train.data.synthetic.dataset import render_clip  # noqa: E402
from animatex_train.models.config import DenoiserConfig  # noqa: E402
from animatex_train.models.flops import count_forward_flops  # noqa: E402

H100_BF16_PEAK = 989.4e12
MFU = 0.35
CLIP_DIM = 1024


def build(root: Path, clips: int, frames: int, size: tuple[int, int], copies: int) -> tuple[list, DataIndex, Path]:
    """Write the baseline's mp4 pairs and our shard (each clip ``copies`` times); returns pairs, index, anchors."""
    height, width = size
    h, w = height // 8, width // 8
    pairs, records, bodies = [], [], []
    styles = ("human", "teapot", "fox")
    for i in range(clips):
        video, pose = render_clip(styles[i % 3], seed=i, num_frames=frames, size=size)
        write_mp4(root / f"clip{i}.mp4", video, fps=8, crf=18)
        write_mp4(root / f"clip{i}.pose.mp4", render_pose(pose), fps=8, crf=18)
        pairs.append((str(root / f"clip{i}.mp4"), str(root / f"clip{i}.pose.mp4")))
        rng = np.random.default_rng(i)
        refs = [0, frames // 2, frames - 1]
        jpegs = [
            cv2.imencode(".jpg", cv2.cvtColor(video[r], cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
            for r in refs
        ]
        arrays = {
            "latent_mean": rng.standard_normal((frames, 4, h, w)).astype(np.float16),
            "latent_std": (np.abs(rng.standard_normal((frames, 4, h, w))) * 0.1).astype(np.float16),
            "clip_embeds": rng.standard_normal((frames, CLIP_DIM)).astype(np.float16),
        }
        for copy in range(copies):
            meta = ClipMeta(
                video_id=f"clip{i}",
                clip_index=copy,
                frame_indices=list(range(frames)),
                fps=8.0,
                source_fps=8.0,
                height=height,
                width=width,
                ref_frames=refs,
                pose_source="synthetic",
            )
            records.append(ClipRecord(key=meta.key, meta=meta, pose=pose, ref_jpegs=jpegs, **arrays))
        bodies.append(pose.to_array()[0])
    records.sort(key=lambda r: (r.meta.clip_index, r.meta.video_id))  # clips interleaved along the shard
    shard = root / "shard.tar"
    with tarfile.open(shard, "w") as tar:
        for record in records:
            for member, data in encode_clip(record).items():
                if member != "__key__":
                    info = tarfile.TarInfo(f"{record.key}.{member}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    info = ShardInfo(str(shard), tuple(r.key for r in records), (frames,) * len(records), height, width)
    anchors = root / "anchors.npy"
    AnchorPool(np.stack(bodies), [size] * clips, ["benchmark"] * clips).save(anchors)
    return pairs, DataIndex(((info,),), (1.0,)), anchors


def our_loader(index: DataIndex, anchors: Path, frames: int, workers: int) -> ShardStreamLoader:
    layout = Layout(world_size=1, workers=max(1, workers), batch_size=1, shuffle_buffer=1, seed=0)
    settings = StreamSettings(
        index, layout, 0, WindowConfig(num_frames=frames - 1), CLIP_DIM, EPIConfig(), str(anchors)
    )
    return ShardStreamLoader(ShardStream(settings), num_workers=workers)


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its finished child processes (loader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Meter:
    """Accumulated samples, CPU time (every process involved) and wall time of one side."""

    def __init__(self) -> None:
        self.samples, self.cpu, self.wall = 0, 0.0, 0.0

    def run(self, produce: Callable[[], int]) -> None:
        cpu, wall = _cpu_seconds(), time.perf_counter()
        self.samples += produce()  # a pass's worker processes have been joined when it returns
        self.cpu += _cpu_seconds() - cpu
        self.wall += time.perf_counter() - wall

    @property
    def rate(self) -> float:
        """Samples per CPU-second."""
        return self.samples / self.cpu

    def line(self, label: str) -> str:
        return (
            f"{label}: {self.cpu / self.samples * 1e3:6.1f} ms CPU/sample = {self.rate:6.2f} samples/s per "
            f"core (wall {self.samples / self.wall:5.2f}/s, {self.samples} samples)"
        )


def batch_bytes(index: DataIndex, anchors: Path, frames: int, size: tuple[int, int]) -> tuple[float, float]:
    """(MB per sample crossing to the training process, pose crops as a fraction of the whole label images)."""
    total = crops = samples = 0
    for batch in our_loader(index, anchors, frames, workers=0):
        total += sum(t.numel() * t.element_size() for t in vars(batch).values() if isinstance(t, torch.Tensor))
        crops += batch.pose_crops.numel()
        samples += batch.batch_size
    return total / samples / 1e6, crops / (samples * frames * size[0] * size[1])


def count(batches: Iterable) -> int:
    """Samples in ``batches``: ``Batch`` es, baseline samples, or baseline batches (collated, one more axis)."""
    return sum(
        batch.batch_size if not isinstance(batch, dict) else len(batch["frames"]) if batch["frames"].dim() == 5 else 1
        for batch in batches
    )


def measure_per_core(pairs, index, anchors, frames: int, size: tuple[int, int], rounds: int) -> dict[str, Meter]:
    """Both loaders in this process, and each through one DataLoader worker process as training runs them.

    Through a worker, a batch also pays for its trip to the training process: ours is written into shared
    memory from the start; the baseline's default collate copies its float tensors there (what peers' loaders
    do). The CPU time of the worker and of this process is charged.
    """
    meters = {name: Meter() for name in ("ours", "baseline", "ours, 1 worker", "baseline, 1 worker")}
    loaders = {
        "ours": our_loader(index, anchors, frames, workers=0),
        "ours, 1 worker": our_loader(index, anchors, frames, workers=1),
    }
    baseline = DecodeOnTheFlyDataset(pairs, num_frames=frames - 1, size=size)
    count([next(iter(loaders["ours"]))])  # warm-up: imports, the first plan, first-call costs
    count([baseline[0]])
    for r in range(rounds):  # alternate, so all see the same machine load
        baseline.seed = r + 1  # new windows and references every round, like a new epoch
        meters["ours"].run(lambda: count(loaders["ours"]))
        meters["baseline"].run(lambda: count(baseline[i] for i in range(len(baseline))))
        meters["ours, 1 worker"].run(lambda: count(loaders["ours, 1 worker"]))
        workers = torch.utils.data.DataLoader(baseline, batch_size=1, num_workers=1)  # peers' map-style loader
        meters["baseline, 1 worker"].run(lambda: count(workers))  # noqa: B023 (run() calls it at once)
    return meters


def data_wait(index: DataIndex, anchors: Path, frames: int, step_s: float) -> tuple[float, float, float, int, float]:
    """(first-batch wait, wait over the other batches, their total time, their count, mean release time).

    Like a training loop, the consumer holds each batch through its step and drops it afterwards; dropping it
    (unmapping its shared memory, ~ms) is timed apart: it is main-thread work between steps, not waiting.
    """
    iterator = iter(our_loader(index, anchors, frames, workers=2))
    start = time.perf_counter()
    batch = next(iterator)
    first = time.perf_counter() - start
    time.sleep(step_s)
    waited = total = released = 0.0
    steps = 0
    while True:
        start = time.perf_counter()
        del batch
        released += time.perf_counter() - start
        start = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            break
        wait = time.perf_counter() - start
        time.sleep(step_s)  # the GPU step; the workers keep preparing the next batches meanwhile
        waited, total, steps = waited + wait, total + wait + step_s, steps + 1
    return first, waited, total, steps, released / max(steps, 1)


def tiny_encoder_seconds(pairs, frames: int, size: tuple[int, int]) -> float:
    """CPU seconds of the tiny VAE + CLIP on one baseline sample (for reference; not charged)."""
    from animatex_train.encoders.clip import CLIPConfig, FrozenCLIPImageEncoder
    from animatex_train.encoders.vae import FrozenVAE, VAEConfig

    vae = FrozenVAE(VAEConfig(tiny=True, encode_chunk_size=16))
    clip = FrozenCLIPImageEncoder(CLIPConfig(tiny=True))
    sample = DecodeOnTheFlyDataset(pairs, num_frames=frames - 1, size=size)[0]
    encode_batch(sample, vae, clip)
    start = time.process_time()
    encode_batch(sample, vae, clip)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--frames", type=int, default=33, help="stored frames per clip (window: frames - 1)")
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--copies", type=int, default=16, help="times each clip is in our shard (epoch length)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating per-core passes of each side")
    parser.add_argument("--skip-encoders", action="store_true", help="skip timing the tiny encoders on the CPU")
    args = parser.parse_args()
    size = (args.height, args.width)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    forward = count_forward_flops(DenoiserConfig(), num_frames=args.frames - 1, height=args.height, width=args.width)
    step_s = 3 * forward.forward_flops / (MFU * H100_BF16_PEAK)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        pairs, index, anchors = build(root, args.clips, args.frames, size, args.copies)
        print(
            f"built {args.clips} clips of {args.frames} frames at {args.height}x{args.width} "
            f"({args.clips * args.copies} shard samples) in {time.perf_counter() - start:.1f} s"
        )
        meters = measure_per_core(pairs, index, anchors, args.frames, size, args.rounds)
        megabytes, crop_fraction = batch_bytes(index, anchors, args.frames, size)
        encode_s = None if args.skip_encoders else tiny_encoder_seconds(pairs, args.frames, size)
        first, waited, total, steps, release_s = data_wait(index, anchors, args.frames, step_s)
    print(
        f"our batch: {megabytes:.1f} MB per sample; its pose-label crops hold {crop_fraction:.0%} of the pixels of "
        f"the whole label images"
    )
    for name, meter in meters.items():
        print(meter.line(f"{name:<19}"))
    for path in ("", ", 1 worker"):
        ours, theirs = meters[f"ours{path}"], meters[f"baseline{path}"]
        print(
            f"speedup per core{path or ', in this process'}: {ours.rate / theirs.rate:.2f} "
            f"(wall clock: {ours.samples / ours.wall / (theirs.samples / theirs.wall):.2f})"
        )
    speedup = ours.rate / theirs.rate  # the main figure: through worker processes, as training runs
    if encode_s is not None:
        charged = ours.rate / (theirs.samples / (theirs.cpu + encode_s * theirs.samples))
        print(
            f"baseline encoders (tiny VAE + CLIP on this CPU, not charged): {encode_s:.2f} s/sample; with them "
            f"charged the ratio would be {charged:.1f} (not the figure: peers encode on the GPU)"
        )
    print(f"predicted H100 step (paper model, {args.frames - 1} frames, batch 1, {MFU:.0%} MFU): {step_s:.3f} s")
    print(
        f"data wait, 2 workers: first batch of the epoch {first:.2f} s (once per epoch); then {waited:.3f} s "
        f"of {total:.1f} s over {steps} steps ({waited / max(steps, 1) * 1e3:.1f} ms per step); releasing a "
        f"used batch: {release_s * 1e3:.1f} ms per step (not waiting)"
    )
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs")
    print(f"speedup_per_core: {speedup:.2f} data_wait_fraction: {waited / max(total, 1e-9):.4f}")


if __name__ == "__main__":
    main()
