"""Throughput of each evaluation metric (preprocessing + network + per-frame maths), with random weights.

    python benchmarks/eval_throughput.py [--size 256] [--frames 32] [--device cpu|cuda] [--threads N]

Prints frames/s for each metric and, on the CPU, frames/s per core; then the time to score a test set of
``--videos`` videos x ``--frames`` frames (paired metrics and FID on every frame, FID-VID and FVD on every stride-1
16-frame window, generated and ground-truth sides). Sliding windows cost one network call per frame once a video is
longer than 16 frames, so their "frames/s" is windows/s. Nothing is downloaded: the networks are the exact
architectures with seeded random weights (speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import animatex_train  # noqa: F401  (torchvision compat shim before anything else)
from animatex_train.eval.metrics.distribution import ClipFeatureStream, FrameFeatureStream
from animatex_train.eval.metrics.paired import PAIRED_METRICS
from animatex_train.eval.metrics.suite import MetricsConfig, _build


def _random_weights(folder: Path) -> dict[str, str]:
    """Seeded random weight files of each network, in the layouts the loaders read."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "eval"))
    from networks import write_random_metric_weights

    return {k: str(v) for k, v in write_random_metric_weights(folder).items()}


def _rate(function, count: int, repeats: int = 2) -> float:
    function()  # warm-up (allocations, lazy init)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return count / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="frame side in pixels (TikTok tables: 256)")
    parser.add_argument("--batch", type=int, default=16, help="frames per measurement")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads (cores)")
    parser.add_argument("--videos", type=int, default=100, help="test-set size for the time estimate")
    parser.add_argument("--frames", type=int, default=32, help="frames per test video for the estimate")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8)
    noisy = np.clip(frames.astype(int) + rng.integers(-20, 21, frames.shape), 0, 255).astype(np.uint8)
    rates: dict[str, float] = {}
    for name, function in PAIRED_METRICS.items():
        rates[name] = _rate(lambda f=function: [f(a, b) for a, b in zip(noisy, frames, strict=True)], len(frames))
    with tempfile.TemporaryDirectory() as folder:
        weights = _random_weights(Path(folder))
        config = MetricsConfig(device=args.device)
        lpips = _build("lpips", weights["vgg16"], config).to(args.device)
        gen, gt = torch.from_numpy(noisy), torch.from_numpy(frames)
        rates["lpips"] = _rate(lambda: [lpips(gen[i : i + 1], gt[i : i + 1]) for i in range(len(gen))], len(gen))
        fid = FrameFeatureStream(_build("fid", weights["fid_inception"], config).to(args.device), batch_size=50)
        rates["fid"] = _rate(lambda: ([fid.add("gen", f) for f in frames], fid.flush("gen")), len(frames))
        for metric, key in (("fid_vid", "r3d50"), ("fvd", "i3d")):
            stream = ClipFeatureStream(_build(metric, weights[key], config).to(args.device), metric, "sliding", 4)
            clip = list(frames[:1]) * 19  # 19 frames -> 4 windows (the steady state: one window per new frame)
            rates[metric] = _rate(lambda s=stream, c=clip: s.add_video("gen", c), 4, repeats=1)
    cores = args.threads if args.device == "cpu" else None
    print(f"device {args.device}, {args.size}x{args.size} frames" + (f", {cores} threads" if cores else ""))
    print(f"{'metric':<20}{'frames/s':>12}{'frames/s/core':>16}")
    for name, rate in rates.items():
        per_core = f"{rate / cores:.2f}" if cores else "-"
        print(f"{name:<20}{rate:>12.2f}{per_core:>16}")
    frames_total = args.videos * args.frames
    windows = args.videos * max(0, args.frames - 15)
    seconds = (
        frames_total * sum(1 / rates[m] for m in ("psnr_star", "ssim", "l1", "lpips"))
        + 2 * frames_total / rates["fid"]
        + 2 * windows * (1 / rates["fid_vid"] + 1 / rates["fvd"])
    )
    print(
        f"scoring {args.videos} videos x {args.frames} frames (gen + GT sides, sliding windows): "
        f"{seconds / 60:.1f} min on this device (generation not included)"
    )


if __name__ == "__main__":
    main()
