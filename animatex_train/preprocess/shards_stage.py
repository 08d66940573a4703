"""The shards stage on one rank: its share of the videos -> shards, journaled so that a rerun resumes.

Videos are processed in list order; each video's samples go to the open shard of its split and resolution
bucket, which is closed at
the first video boundary at or past ``shards.target_size_mb``. The rule depends only on the samples, so an
interrupted run, once rerun, writes exactly the shards an uninterrupted run writes: finished videos are
skipped (journal), and every shard that was open at the crash is rebuilt from its first video.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console

from animatex_train.data.format.schema import SCHEMA_VERSION
from animatex_train.preprocess import rejects
from animatex_train.preprocess.clipwork import process_video
from animatex_train.preprocess.config import PrepareConfig
from animatex_train.preprocess.identity import config_identity, pose_identity
from animatex_train.preprocess.inputs import VideoSource, rank_share
from animatex_train.preprocess.journal import RankJournal, VideoOutcome, fingerprint
from animatex_train.preprocess.pose import PoseEstimator, PoseImporter, build_pose_provider
from animatex_train.preprocess.rejects import Reject, VideoRejected
from animatex_train.preprocess.report import StageSummary, print_summary, progress_bar
from animatex_train.preprocess.sampling import VideoPlan, plan_video
from animatex_train.preprocess.shards import (
    ShardSequenceWriter,
    VideoStaging,
    bucket_name,
    remove_stale_temp_files,
    staging_path,
)
from animatex_train.preprocess.video import probe_video

log = logging.getLogger(__name__)


def run_settings(config: PrepareConfig, videos: list[VideoSource], listing_rejects: list[Reject]) -> dict[str, Any]:
    """Everything that decides the bytes of the dataset; its hash is the resume fingerprint.

    Thread counts, progress display and the stage selection are left out: they do not change the output.
    """
    video_list = [[v.rel_path, v.video_id, v.split, v.source, v.licence] for v in videos]
    pose = config.pose
    return {
        "schema_version": SCHEMA_VERSION,
        "name": config.name,
        "clips": asdict(config.clips),
        "pose": {
            "identity": pose_identity(pose.method, pose.det_model, pose.pose_model, pose.keep_face),
            "device": pose.device,
            "batch_size": pose.batch_size,
            "min_body_points": pose.min_body_points,
            "min_person_fraction": pose.min_person_fraction,
        },
        "encoders": {
            "vae": config_identity(config.encoders.vae),
            "clip": config_identity(config.encoders.clip),
            "device": config.encoders.device,
        },
        "shards": {
            "target_size_mb": config.shards.target_size_mb,
            "jpeg_quality": config.shards.jpeg_quality,
            "write_frames_mp4": config.shards.write_frames_mp4,
            "mp4_crf": config.shards.mp4_crf,
        },
        "num_videos": len(videos),
        "videos_sha256": hashlib.sha256(json.dumps(video_list).encode()).hexdigest(),
        "listing_rejects": [r.to_json() for r in listing_rejects],
    }


def run_shards_stage(
    config: PrepareConfig,
    rank: int,
    world_size: int,
    videos: list[VideoSource],
    listing_rejects: list[Reject],
    console: Console | None = None,
) -> StageSummary:
    """Write this rank's shards and journal them.

    Args:
        config: the run's settings.
        rank: this rank.
        world_size: number of ranks.
        videos: the full sorted input list (every rank passes the same list).
        listing_rejects: inputs rejected while listing (recorded in every rank's header; merged once).
        console: where the summary goes.

    Returns:
        This run's counters.

    Raises:
        JournalError: the output folder holds a journal written with other settings.
    """
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    settings = run_settings(config, videos, listing_rejects)
    header = {"rank": rank, "world_size": world_size, "fingerprint": fingerprint(settings), "settings": settings}
    journal = RankJournal.open(output_dir, rank, header)
    for stale in remove_stale_temp_files(output_dir, rank):
        log.info("removed %s left by an interrupted run", stale.name)
    share = rank_share(videos, rank, world_size)
    done = journal.state.done_videos()
    summary = StageSummary(stage="shards", rank=rank, world_size=world_size, videos=len(share))
    writers: dict[tuple[str, str], ShardSequenceWriter] = {}  # by (split, bucket)
    pending: dict[tuple[str, str], list[VideoOutcome]] = {}
    provider = encoder = None
    with progress_bar(config.progress) as progress:
        task = progress.add_task(f"rank {rank}/{world_size} shards", total=len(share), note="")
        for video in share:
            if video.rel_path in done:
                summary.skipped += 1
                progress.advance(task)
                continue
            if provider is None:  # built only when there is work: a finished rank reruns in seconds
                from animatex_train.preprocess.encode import ClipEncoder  # torch + encoders: heavy

                setup_start = time.perf_counter()
                provider = _build_provider(config)
                encoder = ClipEncoder(config.encoders)
                summary.setup_seconds = time.perf_counter() - setup_start
            staging = VideoStaging(staging_path(output_dir, rank))
            try:
                plan = _plan(video, config)
                outcome = process_video(video, plan, config, provider, encoder, staging)
            except VideoRejected as rejected:
                staging.discard()
                _reject(journal, summary, Reject(video.rel_path, rejected.reason, rejected.detail))
            except Exception as error:  # one bad video must not end a long run; a rerun retries "error" rejects
                staging.discard()
                if config.fail_fast:
                    raise
                log.exception("unexpected error on %s", video.rel_path)
                _reject(journal, summary, Reject(video.rel_path, rejects.ERROR, f"{type(error).__name__}: {error}"))
            else:
                key = (video.split, bucket_name(plan.resolution))
                writer = writers.get(key)
                if writer is None:
                    writer = writers[key] = ShardSequenceWriter(
                        output_dir, *key, rank, journal.state.next_index(*key), config.shards.target_bytes
                    )
                writer.append_video(staging, video.video_id)
                pending.setdefault(key, []).append(outcome)
                summary.processed += 1
                summary.clips += outcome.num_clips
                summary.frames += outcome.num_frames
                summary.clip_rejects += len(outcome.clip_rejects)
                summary.reasons.update(r.reason for r in outcome.clip_rejects)
                if writer.full():
                    _close(journal, writer, pending)
            progress.update(task, advance=1, note=f"{summary.clips} clips, {summary.rejected} rejected")
        for writer in writers.values():
            _close(journal, writer, pending)
    summary.stop()
    journal.record_done(summary.to_json())
    if config.progress:
        print_summary(summary, console)
    return summary


def _plan(video: VideoSource, config: PrepareConfig) -> VideoPlan:
    clips = config.clips
    return plan_video(
        probe_video(video.path),
        num_frames=clips.num_frames,
        stride=clips.stride,
        fps=clips.fps,
        vfr_policy=clips.vfr_policy,
        max_clips=clips.max_clips_per_video,
        resolutions=clips.resolutions_px,
    )


def _build_provider(config: PrepareConfig) -> PoseEstimator | PoseImporter:
    pose = config.pose
    return build_pose_provider(
        pose.method,
        det_model=pose.det_model,
        pose_model=pose.pose_model,
        device=pose.device,
        batch_size=pose.batch_size,
        num_threads=pose.num_threads,
        keep_face=pose.keep_face,
        pkl_dir=pose.pkl_dir,
        sidecar_dir=config.sidecar_folder(),
        mediapipe_model_complexity=pose.mediapipe_model_complexity,
    )


def _reject(journal: RankJournal, summary: StageSummary, reject: Reject) -> None:
    log.warning("rejected %s: %s: %s", reject.video, reject.reason, reject.detail)
    journal.record_reject(reject)
    summary.rejected += 1
    summary.reasons[reject.reason] += 1


def _close(
    journal: RankJournal, writer: ShardSequenceWriter, pending: dict[tuple[str, str], list[VideoOutcome]]
) -> None:
    record = writer.finish()
    if record is not None:
        journal.record_shard(record, pending.pop((writer.split, writer.bucket), []))
        log.info("wrote %s: %d clips, %.1f MiB", record.path, record.num_samples, record.size_bytes / 2**20)
