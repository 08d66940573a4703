"""Cost of ``animate`` per generated second of video: one pass over all frames vs overlapping windows.

For the paper configuration at 768x512, counted on the meta device (no memory, no GPU): the number of UNet
evaluations (network calls: DDIM evaluations x 2 with classifier-free guidance, x the number of windows) and
the forward TFLOPs (``models/flops.py``), divided by the seconds of video generated (frames / fps).

    python benchmarks/animate_cost.py [--frames 32 96 300] [--fps 8] [--window 32 --overlap 8] [--steps 30]

One pass over N frames costs attention quadratic in N (the temporal attentions and the IPI's keypoint encoder run
across all N + 1 frames) and needs memory for all of them at once; windows cost a fixed amount per window, and
their overlap is recomputed. ``--guidance 1`` halves both columns (no unconditional pass).
"""

from __future__ import annotations

import argparse
import dataclasses

import animatex_train  # noqa: F401  (torchvision compat shim before anything else)
from animatex_train.diffusion.schedule import ddim_timesteps
from animatex_train.inference.windows import window_schedule
from animatex_train.models.config import DenoiserConfig
from animatex_train.models.flops import count_forward_flops


def forward_flops(frames: int, height: int, width: int, cache: dict[int, int]) -> int:
    """Forward FLOPs of one conditional UNet call on ``frames`` generated frames (position table sized to fit)."""
    if frames not in cache:
        config = DenoiserConfig()
        config.ipi = dataclasses.replace(config.ipi, max_frames=max(config.ipi.max_frames, frames + 1))
        cache[frames] = count_forward_flops(config, num_frames=frames, height=height, width=width).forward_flops
    return cache[frames]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[32, 96, 300], help="generated frames")
    parser.add_argument("--fps", type=float, default=8.0, help="output frame rate (the released save_fps is 8)")
    parser.add_argument("--window", type=int, default=32, help="frames per window")
    parser.add_argument("--overlap", type=int, default=8, help="frames shared by neighbouring windows")
    parser.add_argument("--steps", type=int, default=30, help="DDIM steps (30 gives 31 evaluations)")
    parser.add_argument("--guidance", type=float, default=2.5, help="CFG scale; 1 skips the unconditional pass")
    parser.add_argument("--size", default="768x512", help="HEIGHTxWIDTH")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    evaluations = len(ddim_timesteps(1000, args.steps))
    branches = 1 if args.guidance == 1.0 else 2
    cache: dict[int, int] = {}
    print(
        f"paper denoiser at {height}x{width}, {args.steps} DDIM steps ({evaluations} evaluations), "
        f"{'no ' if branches == 1 else ''}CFG, output {args.fps:g} fps, windows {args.window}/{args.overlap}"
    )
    print(
        f"{'frames':>6} {'seconds':>8} {'mode':<14} {'windows':>7} {'UNet evals':>10} {'TFLOP':>10} "
        f"{'evals/s':>9} {'TFLOP/s of video':>17}"
    )
    for n in args.frames:
        seconds = n / args.fps
        schedule = window_schedule(n, args.window, args.overlap)
        rows = [("single pass", 1, forward_flops(n, height, width, cache))]
        rows.append(
            (
                f"windows {args.window}/{args.overlap}",
                len(schedule),
                sum(forward_flops(len(w), height, width, cache) for w in schedule),
            )
        )
        for mode, windows, flops_per_evaluation in rows:
            calls = evaluations * branches * windows
            total = evaluations * branches * flops_per_evaluation / 1e12
            print(
                f"{n:>6} {seconds:>8.2f} {mode:<14} {windows:>7} {calls:>10} {total:>10.1f} "
                f"{calls / seconds:>9.1f} {total / seconds:>17.1f}"
            )


if __name__ == "__main__":
    main()
