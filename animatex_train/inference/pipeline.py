"""``animate()``: a reference image and a driving video in, the generated frames and their metadata out.

This is the Python API behind ``animatex-train animate`` (a GUI or a node pack wraps it the same way): load the
networks once with ``load_models`` and pass them to every call, or let ``animate`` load them from the settings.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from animatex_train.encoders.vae import decode_frames
from animatex_train.inference import outputs
from animatex_train.inference.conditions import clip_conditions, conditions_to
from animatex_train.inference.frames import FramePlan, plan_frames
from animatex_train.inference.media import DrivingSource, open_driving
from animatex_train.inference.poses import pkl_fps
from animatex_train.inference.prepare import PreparedClip, prepare_clip
from animatex_train.inference.runtime import AnimateModels, load_models, peak_memory
from animatex_train.inference.sampling import ModelFn, SamplingRecord, generate_latents, initial_noise
from animatex_train.inference.settings import AnimateSettings
from animatex_train.inference.weights import resize_position_table
from animatex_train.models.unet import DenoiserConditions

log = logging.getLogger(__name__)


@dataclass
class AnimationResult:
    """What ``animate`` returns.

    Attributes:
        frames: ``(n, H, W, 3)`` uint8 generated frames.
        fps: their frame rate.
        meta: every resolved setting, the seed, the checkpoint and its hash, the frames used, timings and peak
            memory (what ``<name>.meta.json`` holds).
        clip: the prepared conditioning (reference, pose images, keypoints, fitted source frames).
        plan: the source frames used.
        latents: ``(1, 4, n, h, w)`` model-space latents (CPU, float32).
        output: the written mp4, when ``output`` was given.
    """

    frames: np.ndarray
    fps: Fraction
    meta: dict
    clip: PreparedClip
    plan: FramePlan
    latents: torch.Tensor
    output: Path | None = None


def models_for(settings: AnimateSettings) -> AnimateModels:
    """``load_models`` with the settings' weights and runtime options."""
    s = settings.resolved()
    return load_models(
        s.weights,
        device=s.sampling.device,
        precision=s.sampling.precision,
        official=s.mode == "official",
        offload=s.sampling.offload,
        decode_chunk=s.sampling.decode_chunk,
        cache_dir=s.inputs.cache_dir,
        attention=s.sampling.attention,
    )


def _model_fn(models: AnimateModels, settings: AnimateSettings, num_frames: int) -> tuple[ModelFn, list | None]:
    """The denoiser (under the chosen precision), wrapped in windows when ``--window`` is set."""
    net = models.net

    dtype = models.dtype

    def denoise(x: torch.Tensor, t: torch.Tensor, conditions: DenoiserConditions | None) -> torch.Tensor:
        # Weights, latents and conditions in the chosen precision (the conditions were cast once, before the
        # loop), under autocast so norms and softmax run in float32 where the device's autocast says so (the
        # released run: fp16 UNet under amp.autocast). The DDIM update stays float32.
        with models.autocast():
            return net(x.to(dtype), t, conditions).float()

    sampling = settings.sampling
    if sampling.window is None:
        return denoise, None
    from animatex_train.inference.windows import WindowedDenoiser, window_schedule

    schedule = window_schedule(num_frames, sampling.window, sampling.overlap, tail=sampling.window_tail)
    return WindowedDenoiser(denoise, schedule, fusion=sampling.fusion, window_batch=sampling.window_batch), schedule


def _prepare(
    ref: str | Path, video: str | Path, settings: AnimateSettings, models: AnimateModels
) -> tuple[DrivingSource, FramePlan, PreparedClip]:
    inputs = settings.inputs
    folder_fps = inputs.source_fps
    if folder_fps is None and inputs.pkl and Path(video).is_dir():
        folder_fps = pkl_fps(inputs.pkl)
    driving = open_driving(video, folder_fps)
    plan = plan_frames(
        driving.info,
        stride=inputs.stride,
        target_fps=inputs.target_fps,
        start=inputs.start,
        frames=inputs.frames,
        fps=settings.output.fps,
    )
    return driving, plan, prepare_clip(ref, driving, plan, settings, models, seed=settings.sampling.seed)


def preview_alignment_only(
    ref: str | Path, video: str | Path, settings: AnimateSettings, path: str | Path, models: AnimateModels | None = None
) -> PreparedClip:
    """``--dry_run_align``: prepare the clip, write the alignment preview PNG to ``path``, and stop (no sampling),
    to try ``--align``/``--pose_scale``/``--pose_offset`` quickly."""
    settings = settings.resolved()
    settings = replace(settings, output=replace(settings.output, align_preview=str(path)))
    models = models or models_for(settings)
    return _prepare(ref, video, settings, models)[2]


def animate(
    ref: str | Path,
    video: str | Path,
    settings: AnimateSettings | None = None,
    *,
    models: AnimateModels | None = None,
    output: str | Path | None = None,
    seed: int | None = None,
) -> AnimationResult:
    """Animate ``ref`` with the motion of ``video``.

    Args:
        ref: the character image (any size; EXIF orientation and transparency handled).
        video: the driving video (mp4, ...), or the official ``saved_frames/<video>`` folder with ``--pkl``.
        settings: everything else (``AnimateSettings``); None = defaults, which need weights
            (``WeightsSettings``), so pass at least those.
        models: networks loaded by ``load_models``/``models_for`` (reused across calls); None = load them.
        output: write the mp4 (and ``<name>.meta.json``, optional poses/frames) here.
        seed: overrides ``settings.sampling.seed``.

    Returns:
        The frames, their rate and the metadata (see ``AnimationResult``).
    """
    started = time.perf_counter()
    settings = (settings or AnimateSettings()).resolved()
    if seed is not None:
        settings = replace(settings, sampling=replace(settings.sampling, seed=int(seed)))
    timings: dict[str, float] = {}
    if models is None:
        models = models_for(settings)
        timings["load_models"] = time.perf_counter() - started
    mark = time.perf_counter()
    sampling = settings.sampling
    if models.device.type == "cuda":  # peak memory per animation, not per process
        torch.cuda.reset_peak_memory_stats(models.device)
    models.vae.config.decode_chunk_size = sampling.decode_chunk  # a per-job setting; the VAE reads it per call
    driving, plan, clip = _prepare(ref, video, settings, models)
    timings["prepare"] = time.perf_counter() - mark
    n = plan.num_frames
    resize_position_table(models.net, n + 1)
    conditions = clip_conditions(
        clip.inputs, sampling.ref_mode, repeat_local_image=settings.mode == "official", device=models.device
    )
    conditions = conditions_to(conditions, dtype=models.dtype)
    model_fn, schedule = _model_fn(models, settings, n)
    h, w = clip.canvas[0] // 8, clip.canvas[1] // 8
    shape = (1, models.net.config.latent_channels, n, h, w)
    ref_latent = None if clip.inputs.ref_latent is None else clip.inputs.ref_latent[None]
    noise = initial_noise(models.diffusion, shape, sampling.seed, ref_latent, sampling.noise_prior)
    record = SamplingRecord()
    mark = time.perf_counter()
    with torch.no_grad():
        latents = generate_latents(
            model_fn,
            conditions,
            noise,
            models.diffusion,
            sampling.sampler,
            cfg_batch=sampling.cfg_batch,
            device=models.device,
            progress=settings.output.progress,
            seed=sampling.seed,
            record=record,
        ).cpu()
    timings["sampling"] = time.perf_counter() - mark
    mark = time.perf_counter()
    with models.on_device(models.vae) as vae:
        frames = decode_frames(vae, latents)[0].numpy()
    timings["decode"] = time.perf_counter() - mark
    meta = _meta(ref, video, settings, models, plan, clip, record, schedule, timings)
    result = AnimationResult(frames=frames, fps=plan.fps, meta=meta, clip=clip, plan=plan, latents=latents)
    if output is not None:
        result.output = write_result(result, output, settings, driving_path=driving.path, is_file=not driving.is_folder)
    return result


def write_result(
    result: AnimationResult, output: str | Path, settings: AnimateSettings, driving_path: Path, is_file: bool
) -> Path:
    """Write the mp4 (layout, audio), optional poses/frames, then ``<name>.meta.json`` (last: the done marker)."""
    mark = time.perf_counter()
    output = Path(output)
    out = settings.output
    plan, clip = result.plan, result.clip
    frames = outputs.compose(out.layout, result.frames, clip.reference, clip.pose_frames, clip.source_frames)
    audio = None
    if out.audio and is_file:
        if outputs.audio_in_sync(plan.fps, plan.source_fps, plan.stride):
            audio = (driving_path, (plan.start_time, plan.end_time))
        else:
            result.meta["warnings"].append(
                f"audio not muxed: {float(plan.fps):g} fps does not play the frames at "
                "their real speed (source fps / stride)"
            )
    outputs.write_video(output, frames, plan.fps, *(audio or (None, None)))
    written = {"video": str(output), "layout": out.layout, "audio": audio is not None}
    if out.save_poses:
        poses_path = output.with_name(output.stem + ".poses.mp4")
        outputs.write_video(poses_path, clip.pose_frames, plan.fps)
        keypoints_path = output.with_name(output.stem + ".keypoints.npy")
        np.save(keypoints_path, clip.keypoints)
        written.update(poses=str(poses_path), keypoints=str(keypoints_path))
    if out.save_frames:
        written["frames"] = str(outputs.write_frames(output.with_name(output.stem + ".frames"), result.frames))
    result.meta["outputs"] = written
    result.meta["timings_s"]["write"] = time.perf_counter() - mark
    outputs.write_meta(output, result.meta)
    return output


def _meta(
    ref,
    video,
    settings: AnimateSettings,
    models: AnimateModels,
    plan: FramePlan,
    clip: PreparedClip,
    record: SamplingRecord,
    schedule: list | None,
    timings: dict,
) -> dict:
    import animatex_train

    loaded = models.denoiser
    return {
        "status": "ok",
        "animatex_train_version": getattr(animatex_train, "__version__", "unknown"),
        "reference": str(ref),
        "video": str(video),
        "seed": settings.sampling.seed,
        "settings": settings.to_dict(),
        "frames": {
            "count": plan.num_frames,
            "source_indices": plan.indices.tolist(),
            "stride": plan.stride,
            "requested_stride": plan.requested_stride,
            "held_last_pose": plan.held,
            "source_fps": float(plan.source_fps),
            "fps": float(plan.fps),
            "duration_s": plan.duration,
            "source_range_s": [plan.start_time, plan.end_time],
        },
        "checkpoint": {
            "path": loaded.source,
            "kind": loaded.kind,
            "weights": loaded.weights,
            "sha256": loaded.sha256,
            "missing_keys": loaded.missing,
            "unexpected_keys": loaded.unexpected,
        },
        "denoiser_config": loaded.config,
        "device": str(models.device),
        "precision": models.precision,
        "sampling": {
            "timesteps": record.timesteps,
            "network_calls": record.network_calls,
            "cfg_batched": record.cfg_batched,
            "cfg_batch_fallback": record.fallback,
            "windows": schedule,
        },
        "conditioning": clip.notes,
        "warnings": list(clip.warnings),
        "timings_s": dict(timings),
        "peak_memory": peak_memory(models.device),
    }
