"""One video -> its training samples: keypoints onto the stored frames, person filter, references, features.

``process_video`` stages every kept clip of a video (``shards.VideoStaging``) and returns what it did;
the caller moves the staged samples into a shard only when the whole video has succeeded.
"""

from __future__ import annotations

import numpy as np

from animatex_train.data.format.keypoints import PoseSequence
from animatex_train.data.format.schema import ClipMeta, ClipRecord, encode_clip
from animatex_train.data.format.video import encode_mp4
from animatex_train.preprocess import rejects
from animatex_train.preprocess.clipstream import iter_clips
from animatex_train.preprocess.config import PrepareConfig
from animatex_train.preprocess.encode import ClipEncoder, jpeg_bytes
from animatex_train.preprocess.inputs import VideoSource
from animatex_train.preprocess.journal import VideoOutcome
from animatex_train.preprocess.pose.base import PoseEstimator, PoseImporter, SourcePoses, person_frames
from animatex_train.preprocess.rejects import Reject, VideoRejected
from animatex_train.preprocess.sampling import VideoPlan
from animatex_train.preprocess.shards import VideoStaging


def choose_refs(has_person: np.ndarray, num_refs: int) -> list[int]:
    """Reference candidates: up to ``num_refs`` clip-frame indices evenly spaced over the frames with a person.

    Deterministic (no RNG), so reruns store the same references. Falls back to all frames when none shows a
    person (only possible when ``pose.min_person_fraction`` is 0).
    """
    candidates = np.flatnonzero(has_person)
    if candidates.size == 0:
        candidates = np.arange(has_person.size)
    count = min(num_refs, candidates.size)
    picks = np.unique(np.round(np.linspace(0, candidates.size - 1, count)).astype(np.int64))
    return [int(candidates[p]) for p in picks]


def source_poses_for(provider: PoseEstimator | PoseImporter, video: VideoSource, plan: VideoPlan) -> SourcePoses | None:
    """Keypoints read from a file for the whole video (importers), or None when an estimator will run.

    Raises:
        VideoRejected: the file does not cover every frame the clips need.
    """
    if not hasattr(provider, "load"):
        return None
    poses = provider.load(video, plan.info)
    needed = plan.needed_frames
    covered = poses.available[needed]
    if not covered.all():
        raise VideoRejected(
            rejects.POSE_UNAVAILABLE,
            f"the keypoint file covers {int(covered.sum())} of the {needed.size} frames these clips need (it was made "
            "with other clip settings); rerun the pose stage with the same clips.* settings",
        )
    return poses


def process_video(
    video: VideoSource,
    plan: VideoPlan,
    config: PrepareConfig,
    provider: PoseEstimator | PoseImporter,
    encoder: ClipEncoder,
    staging: VideoStaging,
) -> VideoOutcome:
    """Make and stage every kept clip of ``video``.

    Args:
        video: the input.
        plan: its clips (``sampling.plan_video``).
        config: the run's settings.
        provider: pose estimator or importer.
        encoder: the frozen VAE and CLIP.
        staging: receives the encoded samples.

    Returns:
        The video's outcome, including clip-level rejects.

    Raises:
        VideoRejected: the video yields no clip (every clip rejected), or a decode / keypoint problem.
    """
    source = source_poses_for(provider, video, plan)
    estimator = None if source is not None else provider
    pose_source = source.pose_source if source is not None else provider.name
    height, width = plan.resolution
    clip_rejects: list[Reject] = []
    num_clips = num_frames = 0
    for position, frames, rows in iter_clips(
        video.path, plan.info, plan.clips, plan.geometry, estimator, config.pose.batch_size
    ):
        clip_index = plan.clip_indices[position]
        indices = plan.clips[position]
        if rows is None:
            rows = source.points[indices]
        pose = PoseSequence.from_array(
            plan.geometry.transform_points(rows), plan.resolution, name=f"{video.rel_path} clip {clip_index}"
        )
        has_person = person_frames(pose.body, config.pose.min_body_points)
        if has_person.mean() < config.pose.min_person_fraction:
            clip_rejects.append(
                Reject(
                    video.rel_path,
                    rejects.TOO_FEW_PERSON_FRAMES,
                    f"{int(has_person.sum())} of {len(has_person)} frames show a person (>= "
                    f"{config.pose.min_body_points} body points); pose.min_person_fraction is "
                    f"{config.pose.min_person_fraction}",
                    clip_index=clip_index,
                )
            )
            continue
        refs = choose_refs(has_person, config.clips.num_refs)
        latent_mean, latent_std, clip_embeds = encoder.encode(frames)
        meta = ClipMeta(
            video_id=video.video_id,
            clip_index=clip_index,
            frame_indices=[int(i) for i in indices],
            fps=float(plan.fps),
            source_fps=float(plan.info.fps),
            height=height,
            width=width,
            ref_frames=refs,
            pose_source=pose_source,
            split=video.split,
            source=video.source,
            licence=video.licence,
        )
        record = ClipRecord(
            key=meta.key,
            meta=meta,
            latent_mean=latent_mean,
            latent_std=latent_std,
            clip_embeds=clip_embeds,
            pose=pose,
            ref_jpegs=[jpeg_bytes(frames[r], config.shards.jpeg_quality) for r in refs],
            frames_mp4=encode_mp4(frames, plan.fps, config.shards.mp4_crf) if config.shards.write_frames_mp4 else None,
        )
        staging.add(encode_clip(record), len(indices), plan.resolution)
        num_clips += 1
        num_frames += len(indices)
    if num_clips == 0:
        reasons = sorted({r.reason for r in clip_rejects})
        raise VideoRejected(
            rejects.NO_CLIP_KEPT,
            f"all {len(clip_rejects)} clips were rejected ({', '.join(reasons)}); first: {clip_rejects[0].detail}",
        )
    return VideoOutcome(
        video=video.rel_path,
        video_id=video.video_id,
        split=video.split,
        source=video.source,
        licence=video.licence,
        num_clips=num_clips,
        num_frames=num_frames,
        clip_rejects=clip_rejects,
    )
