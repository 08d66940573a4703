"""Pose-image rendering speed on one CPU core: moving full-body poses with hands, drawn clip by clip.

Run: ``python benchmarks/pose_render.py`` (options: ``--help``). The last line of the output is
``frames_per_s_per_core: <float>``, frames per second of process CPU time with OpenCV limited to one thread, so
the number does not depend on other load on the machine. Target: >= 300 at 768x512.
"""

from __future__ import annotations

import os

# Before numpy / OpenCV start their thread pools: one core means one thread everywhere.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from animatex_train.data.epi.preview import demo_pose_sequence  # noqa: E402
from animatex_train.data.format.keypoints import visible  # noqa: E402
from animatex_train.data.pose.render import render_pose  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=320, help="frames in the sequence")
    parser.add_argument("--clip-frames", type=int, default=32, help="frames rendered per call (one training clip)")
    parser.add_argument("--size", type=int, nargs=2, default=[768, 512], metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--repeats", type=int, default=5, help="timed passes; the median is reported")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    height, width = args.size
    pose = demo_pose_sequence(args.frames, (height, width), seed=0)
    starts = range(0, args.frames, args.clip_frames)
    clips = [pose.select(np.arange(s, min(s + args.clip_frames, args.frames))) for s in starts]
    render_pose(clips[0], (height, width))  # warm-up: first-call costs are not steady-state work

    cpu_times, wall_times, checksum = [], [], 0
    for _ in range(args.repeats):
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        for clip in clips:
            images = render_pose(clip, (height, width))  # a fresh buffer per clip, as the data loader does
            checksum += int(images[:, ::64, ::64].sum())
        cpu_times.append(time.process_time() - cpu_start)
        wall_times.append(time.perf_counter() - wall_start)
    cpu, wall = statistics.median(cpu_times), statistics.median(wall_times)
    points_per_frame = (visible(pose.body).sum() + visible(pose.feet).sum() + visible(pose.hands).sum()) / args.frames
    print(f"pose sequence: {args.frames} frames, {points_per_frame:.1f} visible body/feet/hand points per frame")
    print(f"image size: {height}x{width} (HxW), {args.clip_frames} frames per call, OpenCV threads: 1")
    print(f"median of {args.repeats} passes: cpu {cpu * 1e3:.1f} ms, wall {wall * 1e3:.1f} ms (checksum {checksum})")
    print(f"ms_per_frame_cpu: {cpu / args.frames * 1e3:.3f}")
    print(f"frames_per_s_wall: {args.frames / wall:.1f}")
    print(f"frames_per_s_per_core: {args.frames / cpu:.1f}")


if __name__ == "__main__":
    main()
