"""One clip's conditioning from the inputs: fitted reference, driving keypoints (aligned), pose images, CLIP.

Official mode (docs/inference.md): the reference and the poses are stretched to 768x512, the pose images are
the released drawings (source resolution, JPEG, stretch), CLIP sees the raw images, the reference keypoints are
the driving frame 0's (unless ``--ref_keypoints`` gives the ``_ref_pose.pkl`` the released loader reads).
Default mode: one fit (``--ref_fit``) for the reference, the driving frames and every keypoint; DWPose on the
reference for the IPI's frame 0 (the driving frame 0's keypoints, with a warning, when it finds no person);
alignment of the driving poses to the reference; pose images drawn on the canvas; CLIP on the fitted images.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from animatex_train.data.format.keypoints import PoseSequence
from animatex_train.encoders.vae import FrozenVAE
from animatex_train.inference import poses
from animatex_train.inference.conditions import ClipInputs
from animatex_train.inference.fit import FitGeometry, default_canvas
from animatex_train.inference.frames import FramePlan
from animatex_train.inference.media import DrivingSource, load_reference
from animatex_train.inference.runtime import AnimateModels
from animatex_train.inference.settings import AnimateSettings
from animatex_train.preprocess.pose.base import drop_outside_frame

log = logging.getLogger(__name__)


@dataclass
class PreparedClip:
    """A clip ready to sample, plus what the outputs show.

    Attributes:
        inputs: the denoiser's pieces (CPU tensors).
        reference: ``(H, W, 3)`` uint8 fitted reference.
        ref_pose: ``(H, W, 3)`` uint8 reference pose image (pose frame 0).
        pose_frames: ``(n, H, W, 3)`` uint8 driving pose images.
        source_frames: ``(n, H, W, 3)`` uint8 fitted driving frames.
        keypoints: ``(n + 1, 130, 2)`` canvas-normalised keypoints as used (frame 0 = reference).
        canvas: ``(H, W)``.
        notes: what was decided (reference keypoint source, alignment), for ``meta.json``.
        warnings: what the user should know.
    """

    inputs: ClipInputs
    reference: np.ndarray
    ref_pose: np.ndarray
    pose_frames: np.ndarray
    source_frames: np.ndarray
    keypoints: np.ndarray
    canvas: tuple[int, int]
    notes: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _to_unit(images: np.ndarray) -> torch.Tensor:
    """``(..., H, W, 3)`` uint8 -> ``(..., 3, H, W)`` float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).movedim(-1, -3).float() / 255.0


def _align(
    settings: AnimateSettings, ref_kp: np.ndarray | None, driving_kp: np.ndarray, canvas: tuple[int, int]
) -> tuple[np.ndarray, dict | None, list[str]]:
    """Driving keypoints aligned to the reference (``--align``, then ``--pose_scale``/``--pose_offset``), the
    alignment report and its warnings. Without reference keypoints ``align_poses`` falls back (and says so)."""
    inputs = settings.inputs
    if inputs.align == "none" and inputs.pose_scale is None and inputs.pose_offset is None:
        return driving_kp, None, []
    from animatex_train.inference.align import align_poses

    ref = None if ref_kp is None else PoseSequence.from_array(ref_kp[None], canvas, name="reference keypoints")
    driving = PoseSequence.from_array(driving_kp, canvas, name="driving keypoints")
    aligned, report = align_poses(
        ref, driving, inputs.align, align_frame=inputs.align_frame, scale=inputs.pose_scale, offset=inputs.pose_offset
    )
    return drop_outside_frame(aligned.to_array()), report.to_dict(), list(report.warnings)


def _write_preview(
    path: str,
    reference: np.ndarray,
    ref_kp: np.ndarray | None,
    aligned: np.ndarray,
    unaligned: np.ndarray,
    canvas: tuple[int, int],
) -> None:
    from animatex_train.inference.align_preview import preview_alignment

    def pose(points: np.ndarray) -> PoseSequence:
        return PoseSequence.from_array(points[None], canvas, name="preview keypoints")

    preview_alignment(reference, None if ref_kp is None else pose(ref_kp), pose(aligned), path, pose(unaligned))


def _reference_keypoints(
    settings: AnimateSettings, models: AnimateModels, reference: np.ndarray, warnings: list[str]
) -> np.ndarray | None:
    """The reference's own keypoints (normalised to the reference image), or None to use the driving frame 0."""
    inputs = settings.inputs
    if inputs.ref_keypoints_file:
        return poses.read_reference_keypoints(inputs.ref_keypoints_file)
    if inputs.ref_keypoints != "auto":
        return None
    if models.pose is None:
        warnings.append(
            "no DWPose files (--dwpose_det/--dwpose_pose): the reference keypoints are the driving frame "
            "0's, as in the released code"
        )
        return None
    points = poses.estimate(models.pose, [reference], models.pose_cache)[0]
    if not poses.person_detected(points):
        warnings.append(
            "DWPose found no person on the reference (a non-human character?): its keypoints are the "
            "driving frame 0's (the released behaviour) and the poses are not aligned; pass "
            "--ref_keypoints FILE to give them"
        )
        return None
    return points


def prepare_clip(
    reference_path: str | Path,
    driving: DrivingSource,
    plan: FramePlan,
    settings: AnimateSettings,
    models: AnimateModels,
    seed: int = 0,
) -> PreparedClip:
    """Build the clip's conditioning (see the module doc). ``settings`` must be ``resolved()``."""
    official, inputs = settings.mode == "official", settings.inputs
    warnings: list[str] = list(plan.warnings)
    raw_ref = load_reference(reference_path, inputs.bg, official=official)
    canvas = inputs.size or default_canvas(raw_ref.shape[:2])
    unique = plan.unique_indices()
    decoded = driving.frames(unique)
    frame_size = decoded[int(unique[0])].shape[:2]
    if inputs.pkl:
        all_points = poses.pkl_keypoints(inputs.pkl, driving.info.num_frames, frame_size)
        per_index = {int(i): all_points[int(i)] for i in unique}
    elif models.pose is not None:
        estimated = poses.estimate(models.pose, [decoded[int(i)] for i in unique], models.pose_cache)
        per_index = {int(i): estimated[k] for k, i in enumerate(unique)}
    else:
        raise ValueError(
            "--dwpose_det/--dwpose_pose (DWPose ONNX files) or --pkl (official keypoints) is needed to "
            "know the driving poses"
        )
    driving_src = np.stack([per_index[int(i)] for i in plan.indices])  # (n, 130, 2), source-normalised
    ref_geom = FitGeometry.fit(inputs.ref_fit, raw_ref.shape[:2], canvas)
    drv_geom = FitGeometry.fit(inputs.ref_fit, frame_size, canvas)
    reference = ref_geom.apply(raw_ref, fill=inputs.bg)
    own_ref_kp = _reference_keypoints(settings, models, raw_ref, warnings)
    unaligned = drv_geom.transform_points(driving_src)
    own_kp = ref_geom.transform_points(own_ref_kp) if own_ref_kp is not None else None
    driving_kp, report, align_warnings = _align(settings, own_kp, unaligned, canvas)
    warnings += align_warnings
    # IPI frame 0: the reference's keypoints, else (released behaviour) the driving frame 0 as used.
    ref_kp = own_kp if own_kp is not None else driving_kp[0]
    notes = {
        "reference_keypoints": ("file" if inputs.ref_keypoints_file else "dwpose")
        if own_kp is not None
        else "driving_frame_0",
        "canvas": list(canvas),
        "driving_frame_size": list(frame_size),
        "alignment": report or {"mode": "none"},
    }
    if settings.output.align_preview:
        frame = min(inputs.align_frame, len(driving_kp) - 1)
        _write_preview(settings.output.align_preview, reference, own_kp, driving_kp[frame], unaligned[frame], canvas)
        notes["align_preview"] = settings.output.align_preview
    keypoints = np.concatenate([ref_kp[None], driving_kp]).astype(np.float32)
    if inputs.pose_dir:
        ref_image, files = poses.read_pose_dir(inputs.pose_dir, driving.info.num_frames)
        loaded = {int(i): np.asarray(Image.open(files[int(i)]).convert("RGB")) for i in unique}
        pose_frames = np.stack(
            [
                FitGeometry.fit(inputs.ref_fit, loaded[int(i)].shape[:2], canvas).apply(loaded[int(i)])
                for i in plan.indices
            ]
        )
        ref_pose = (
            FitGeometry.fit(inputs.ref_fit, ref_image.shape[:2], canvas).apply(ref_image)
            if ref_image is not None
            else poses.pose_images(keypoints[:1], canvas)[0]
        )
    elif official:
        pose_frames = poses.official_pose_images(driving_src, frame_size, canvas)
        ref_src, ref_size = (own_ref_kp, raw_ref.shape[:2]) if own_ref_kp is not None else (driving_src[0], frame_size)
        ref_pose = poses.official_pose_images(ref_src[None], ref_size, canvas)[0]
    else:
        drawn = poses.pose_images(keypoints, canvas)
        ref_pose, pose_frames = drawn[0], drawn[1:]
    fitted = {int(i): drv_geom.apply(decoded[int(i)], fill=inputs.bg) for i in unique}
    source_frames = np.stack([fitted[int(i)] for i in plan.indices])
    # CLIP sees the raw images in official mode (stretched to 224 by its preprocessing), the fitted ones otherwise;
    # the driving frames share one size, so they go through in batches.
    ref_image = raw_ref if official else reference
    frames = np.stack([(decoded if official else fitted)[int(i)] for i in unique])
    with models.on_device(models.clip) as clip:
        embeddings = torch.cat([clip.encode_images(ref_image[None]).cpu(), clip.encode_images(frames).cpu()])
    row_of = {int(i): k + 1 for k, i in enumerate(unique)}
    driving_clip = torch.cat([embeddings[:1], embeddings[[row_of[int(i)] for i in plan.indices]]])
    ref_latent = None
    if settings.sampling.ref_mode != "local_image" or settings.sampling.noise_prior is not None:
        ref_latent = encode_reference(models.vae, reference, models, seed)
    clip_inputs = ClipInputs(
        reference=_to_unit(reference),
        pose_images=_to_unit(np.concatenate([ref_pose[None], pose_frames])),
        keypoints=torch.from_numpy(poses.ipi_keypoints(keypoints)),
        image_embedding=embeddings[0],
        driving_clip=driving_clip,
        ref_latent=ref_latent,
    )
    for message in warnings:
        log.warning(message)
    return PreparedClip(
        clip_inputs, reference, ref_pose, pose_frames, source_frames, keypoints, canvas, notes, warnings
    )


def encode_reference(vae: FrozenVAE, reference: np.ndarray, models: AnimateModels, seed: int) -> torch.Tensor:
    """``(4, 1, h, w)`` model-space latent of the fitted reference: one posterior sample, as the released worker."""
    pixels = _to_unit(reference)[None] * 2.0 - 1.0
    with models.on_device(vae) as on_device:
        mean, std = on_device.encode_pixels(pixels)
    raw = FrozenVAE.sample_posterior(mean.cpu(), std.cpu(), torch.Generator().manual_seed(int(seed) + 2))
    return (vae.config.to_model_latents(raw)[0]).unsqueeze(1)
