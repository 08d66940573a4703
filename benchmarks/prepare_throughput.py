"""Data-preparation throughput: videos -> shards (clips/s, frames/s per core), then shard read-back (MB/s).

Runs ``prepare_dataset`` on real sample videos with the tiny random-weight VAE and CLIP and the tiny DWPose
stand-in ONNX models (the real onnxruntime pre/post-processing path), so the numbers measure our pipeline:
decoding, resizing, pose pre/post-processing, encoder calls at tiny size, JPEG, tar writing and hashing.
With real weights the encoders dominate; rerun with ``--vae-checkpoint``/``--clip-checkpoint`` and real
ONNX files for production numbers.

    .venv/bin/python benchmarks/prepare_throughput.py                      # tests/fixtures/videos
    .venv/bin/python benchmarks/prepare_throughput.py --videos /work/shared/samples/videos --resolution 768 512
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import animatex_train  # noqa: F401  (compat shim before diffusers / open_clip)

REPO_ROOT = Path(__file__).resolve().parents[1]


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", default=str(REPO_ROOT / "tests" / "fixtures" / "videos"))
    parser.add_argument("--resolution", type=int, nargs=2, default=(256, 192), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--vae-chunk", type=int, default=16, help="frames per VAE encoder call")
    parser.add_argument("--vae-checkpoint", default=None)
    parser.add_argument("--clip-checkpoint", default=None)
    parser.add_argument("--copies", type=int, default=3, help="process each video this many times (symlinks)")
    parser.add_argument("--read-repeats", type=int, default=3, help="read-back passes (best is reported)")
    parser.add_argument("--out", default=None, help="keep the dataset here (default: a temp dir)")
    args = parser.parse_args(argv)

    import webdataset as wds
    from rich.console import Console
    from rich.table import Table

    from animatex_train.data.format.manifest import DatasetManifest
    from animatex_train.data.format.schema import decode_clip
    from animatex_train.encoders.clip import CLIPConfig
    from animatex_train.encoders.vae import VAEConfig
    from animatex_train.preprocess.config import ClipConfig, EncodersConfig, PoseConfig, PrepareConfig, ShardConfig
    from animatex_train.preprocess.pose.tiny_dwpose import write_tiny_dwpose
    from animatex_train.preprocess.prepare import prepare_dataset

    with tempfile.TemporaryDirectory() as tmp:
        det, pose = write_tiny_dwpose(Path(tmp) / "dwpose")
        inputs = Path(tmp) / "videos"
        inputs.mkdir()
        sources = sorted(
            p for p in Path(args.videos).iterdir() if p.suffix.lower() in (".mp4", ".mov", ".webm", ".mkv")
        )
        for copy in range(args.copies):
            for source in sources:
                (inputs / f"{source.stem}-{copy}{source.suffix}").symlink_to(source.resolve())
        out = Path(args.out) if args.out else Path(tmp) / "dataset"
        vae = VAEConfig(
            tiny=args.vae_checkpoint is None, checkpoint=args.vae_checkpoint, encode_chunk_size=args.vae_chunk
        )
        clip = CLIPConfig(tiny=args.clip_checkpoint is None, checkpoint=args.clip_checkpoint)
        config = PrepareConfig(
            videos=str(inputs),
            output_dir=str(out),
            encoders=EncodersConfig(vae=vae, clip=clip),
            clips=ClipConfig(num_frames=args.num_frames, fps=args.fps, resolutions_px=[tuple(args.resolution)]),
            pose=PoseConfig(method="dwpose", det_model=str(det), pose_model=str(pose)),
            shards=ShardConfig(target_size_mb=64),
            progress=False,
        )
        start = time.perf_counter()
        manifest = prepare_dataset(config)
        wall = time.perf_counter() - start
        journal = (out / "journal-r000.jsonl").read_text().splitlines()
        summary = json.loads(journal[-1])["summary"]

        manifest = DatasetManifest.load(out)
        total_bytes = sum(s.size_bytes for s in manifest.shards)
        best = float("inf")
        for _ in range(args.read_repeats):
            begin = time.perf_counter()
            count = 0
            for path in manifest.shard_paths():
                for raw in wds.WebDataset(str(path), shardshuffle=False, empty_check=False):
                    decode_clip(raw)
                    count += 1
            best = min(best, time.perf_counter() - begin)
        assert count == manifest.num_samples

    cores = _cores()
    height, width = args.resolution
    table = Table(
        title=f"prepare throughput ({height}x{width}, {args.num_frames} frames/clip, {args.fps} fps, {cores} cores)"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("videos / clips / frames", f"{summary['processed']} / {summary['clips']} / {summary['frames']}"),
        ("shards stage time", f"{summary['seconds']:.2f} s, of which model loading {summary['setup_seconds']:.2f} s"),
        ("prepare_dataset call", f"{wall:.2f} s (stage + merge)"),
        ("clips/s (w/o loading)", f"{summary['clips_per_s']:.2f}  ({summary['clips_per_s'] / cores:.2f} per core)"),
        ("frames/s (w/o loading)", f"{summary['frames_per_s']:.1f}  ({summary['frames_per_s'] / cores:.1f} per core)"),
        ("dataset size", f"{total_bytes / 2**20:.2f} MiB in {len(manifest.shards)} shards"),
        ("read-back (decode_clip)", f"{total_bytes / 2**20 / best:.1f} MiB/s, {count / best:.0f} clips/s"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
