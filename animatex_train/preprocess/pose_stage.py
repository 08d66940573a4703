"""The pose stage alone (``--stages pose``): estimate keypoints and write ``.pose.npy`` sidecars.

This lets keypoints be made in a different environment from the rest, e.g. mediapipe, whose protobuf pin
breaks the training venv. For each video it writes, atomically, ``<dir>/<rel_path stem>.pose.npy``
(``(num_source_frames, 130, 2)`` packed keypoints normalised to the source frame; frames no clip needs are
``(-1, -1)``) and ``<stem>.pose.json`` (``frames`` covered, ``frame_size``, ``pose_source`` and a
fingerprint of the settings). The shards stage then reads them with ``pose.method=sidecar`` and
``pose.sidecar_dir`` pointing at the same folder. A rerun skips videos whose sidecar has the same
fingerprint; rejected videos are listed in ``pose-rejects-r<rank>.jsonl`` of that run.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from rich.console import Console

from animatex_train.data.format.keypoints import MISSING, NUM_POINTS
from animatex_train.preprocess import rejects
from animatex_train.preprocess.clipstream import iter_clips
from animatex_train.preprocess.config import PrepareConfig
from animatex_train.preprocess.identity import pose_identity
from animatex_train.preprocess.inputs import VideoSource, rank_share
from animatex_train.preprocess.journal import fingerprint
from animatex_train.preprocess.pose import build_pose_provider
from animatex_train.preprocess.pose.importers import SIDECAR_INFO_SUFFIX, SIDECAR_SUFFIX
from animatex_train.preprocess.rejects import Reject, VideoRejected
from animatex_train.preprocess.report import StageSummary, print_summary, progress_bar
from animatex_train.preprocess.sampling import plan_video
from animatex_train.preprocess.video import probe_video

log = logging.getLogger(__name__)


def pose_folder(config: PrepareConfig) -> Path:
    """Where the pose stage writes: ``pose.sidecar_dir``, else ``<output_dir>/poses``."""
    return config.sidecar_folder() or Path(config.output_dir) / "poses"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    with temp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def run_pose_stage(
    config: PrepareConfig, rank: int, world_size: int, videos: list[VideoSource], console: Console | None = None
) -> StageSummary:
    """Estimate keypoints for this rank's videos and write sidecars.

    Args:
        config: settings (``pose.method`` must be an estimator: dwpose or mediapipe).
        rank: this rank.
        world_size: number of ranks.
        videos: the full sorted input list.
        console: where the summary goes.

    Returns:
        This run's counters.
    """
    folder = pose_folder(config)
    clips, pose = config.clips, config.pose
    settings = {
        "clips": {k: v for k, v in asdict(clips).items() if k != "resolutions_px"},  # sidecars are per source frame
        "pose": pose_identity(pose.method, pose.det_model, pose.pose_model, pose.keep_face),
        "batch_size": pose.batch_size,
    }
    stamp = fingerprint(settings)
    share = rank_share(videos, rank, world_size)
    summary = StageSummary(stage="pose", rank=rank, world_size=world_size, videos=len(share))
    bad: list[Reject] = []
    estimator = None
    with progress_bar(config.progress) as progress:
        task = progress.add_task(f"rank {rank}/{world_size} pose", total=len(share), note="")
        for video in share:
            sidecar = video.sidecar_path(folder, SIDECAR_SUFFIX)
            info_path = video.sidecar_path(folder, SIDECAR_INFO_SUFFIX)
            if sidecar.is_file() and info_path.is_file() and _stamp_of(info_path) == stamp:
                summary.skipped += 1
                progress.advance(task)
                continue
            if estimator is None:
                setup_start = time.perf_counter()
                estimator = build_pose_provider(
                    pose.method,
                    det_model=pose.det_model,
                    pose_model=pose.pose_model,
                    device=pose.device,
                    batch_size=pose.batch_size,
                    num_threads=pose.num_threads,
                    keep_face=pose.keep_face,
                    mediapipe_model_complexity=pose.mediapipe_model_complexity,
                )
                summary.setup_seconds = time.perf_counter() - setup_start
            try:
                info = probe_video(video.path)
                plan = plan_video(
                    info,
                    num_frames=clips.num_frames,
                    stride=clips.stride,
                    fps=clips.fps,
                    vfr_policy=clips.vfr_policy,
                    max_clips=clips.max_clips_per_video,
                    resolutions=clips.resolutions_px,
                )
                points = np.full((info.num_frames, NUM_POINTS, 2), MISSING, dtype=np.float32)
                for position, _, rows in iter_clips(video.path, info, plan.clips, None, estimator, pose.batch_size):
                    points[plan.clips[position]] = rows
            except VideoRejected as rejected:
                bad.append(Reject(video.rel_path, rejected.reason, rejected.detail))
            except Exception as error:  # a rerun retries it
                if config.fail_fast:
                    raise
                log.exception("unexpected error on %s", video.rel_path)
                bad.append(Reject(video.rel_path, rejects.ERROR, f"{type(error).__name__}: {error}"))
            else:
                buffer = _npy(points)
                _atomic_write(sidecar, buffer)
                meta = {
                    "frames": plan.needed_frames.tolist(),
                    "frame_size": list(info.frame_size),
                    "pose_source": estimator.name,
                    "fingerprint": stamp,
                }
                _atomic_write(info_path, json.dumps(meta, sort_keys=True).encode())
                summary.processed += 1
                summary.frames += int(plan.needed_frames.size)
                summary.clips += len(plan.clips)
            if bad and bad[-1].video == video.rel_path:
                summary.rejected += 1
                summary.reasons[bad[-1].reason] += 1
                log.warning("rejected %s: %s: %s", video.rel_path, bad[-1].reason, bad[-1].detail)
            progress.update(task, advance=1, note=f"{summary.processed} done, {summary.rejected} rejected")
    lines = "".join(json.dumps(r.to_json(), sort_keys=True) + "\n" for r in bad)
    _atomic_write(folder / f"pose-rejects-r{rank:03d}.jsonl", lines.encode())
    summary.stop()
    if config.progress:
        print_summary(summary, console)
    return summary


def _stamp_of(info_path: Path) -> str | None:
    try:
        return json.loads(info_path.read_text()).get("fingerprint")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
