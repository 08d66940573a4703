"""``AnimateSettings``: every setting of ``animatex-train animate``, typed, documented and checked when built.

The flags of ``animate`` and the keyword arguments of ``animate()`` fill these dataclasses; a manifest line's
overrides do too. ``--mode official`` resolves the settings to the official inference (docs/inference.md)
before anything runs, so ``meta.json`` records what was actually used.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from animatex_train.diffusion.sampling import SamplerConfig

MODES = ("default", "official")
REF_FITS = ("stretch", "crop", "pad")
LAYOUTS = ("result", "ref-pose-result", "ref-pose-result-source")
ALIGN_MODES = ("none", "unianimate", "musepose", "linear")
FUSIONS = ("uniform", "triangular")
WINDOW_TAILS = ("snap", "pad")
PRECISIONS = ("fp32", "bf16", "fp16")
CFG_BATCH = ("auto", "on", "off")
REF_KEYPOINTS = ("auto", "driving0")
REF_MODES = ("local_image", "ref_latent", "both")
OFFICIAL_SIZE = (768, 512)  # (height, width): the released `resolution` [512, 768] (W, H)
OFFICIAL_FPS = 8.0  # the released `save_fps`, whatever the source rate and stride


def _check(ok: bool, flag: str, expected: str, got: Any, fix: str = "") -> None:
    if not ok:
        raise ValueError(f"{flag}: expected {expected}, got {got!r}" + (f"; {fix}" if fix else ""))


@dataclass
class WeightsSettings:
    """Where every network comes from. Nothing is downloaded; paths are the user's files.

    Attributes:
        checkpoint: the denoiser: our export (``.safetensors``), a training run's ``checkpoints/`` folder, a
            ``step-<N>`` folder or its ``state.ckpt``, or the official ``animate-x.pth`` (any frame count: the
            keypoint position table is rebuilt). None = random weights (only with ``tiny``, for tests).
        weights: ``ema`` (default) or ``raw`` weights of a training checkpoint.
        model_config: YAML/JSON file with the denoiser's configuration, for files that do not carry it (an
            official ``.pth`` of a non-released size): ``{denoiser: {...}}`` in our keys or ``{official: {...}}``
            with the official constructor's. Our exports and checkpoints carry theirs; the official ``.pth``
            defaults to the released configuration.
        vae: SD 2.1 VAE (``v2-1_512-ema-pruned.ckpt``/``.safetensors`` or a diffusers folder).
        clip: OpenCLIP ViT-H-14 ``open_clip_pytorch_model.bin``.
        dwpose_det: ``yolox_l.onnx``; with ``dwpose_pose`` it runs DWPose on the driving video and the reference.
        dwpose_pose: ``dw-ll_ucoco_384.onnx``.
        tiny: tiny random-weight VAE and CLIP (and a tiny random denoiser without ``checkpoint``): tests and
            demos on CPU, never real results.
        trust_checkpoint: unpickle a training checkpoint without restrictions (your own runs only).
    """

    checkpoint: str | None = None
    weights: str = "ema"
    model_config: str | None = None
    vae: str | None = None
    clip: str | None = None
    dwpose_det: str | None = None
    dwpose_pose: str | None = None
    tiny: bool = False
    trust_checkpoint: bool = False

    def __post_init__(self) -> None:
        _check(self.weights in ("ema", "raw"), "--weights", "ema or raw", self.weights)
        if not self.tiny:
            for flag, value in (("--checkpoint", self.checkpoint), ("--vae", self.vae), ("--clip", self.clip)):
                _check(
                    value is not None,
                    flag,
                    "a path",
                    value,
                    "download the released files (README: Inference) or pass --tiny for a random-weight smoke run",
                )
        _check(
            (self.dwpose_det is None) == (self.dwpose_pose is None),
            "--dwpose_det/--dwpose_pose",
            "both or neither",
            (self.dwpose_det, self.dwpose_pose),
        )


@dataclass
class InputSettings:
    """How the reference and the driving video become the clip's frames, keypoints and pose images.

    Attributes:
        size: ``(height, width)`` of the generated video, multiples of 64; None = 768x512, or 512x768 for a
            landscape reference.
        ref_fit: how the reference (and, identically, the driving frames and their keypoints) fill ``size``:
            ``stretch`` (official), ``crop`` (cover, center crop) or ``pad`` (contain, pad with ``bg``).
        bg: RGB of the background under a transparent reference and of the padding.
        stride: take every ``stride``-th source frame; None = 1 (or from ``target_fps``).
        target_fps: choose the stride as round(source fps / target_fps) instead.
        start: start time in seconds.
        frames: frames to generate; None = all from ``start``.
        source_fps: frame rate of a frames folder given as the video (default: the ``fps`` the pkl stores).
        pkl: the official ``saved_pkl/<video>.pkl`` keypoints instead of running DWPose on the video.
        pose_dir: the official ``saved_pose/<video>`` pose images (used as drawn; ``ref_pose.jpg`` = frame 0).
        ref_keypoints_file: reference keypoints as ``.npy`` ``(130, 2)``/``(18, 2)`` normalised, or an official pkl.
        ref_keypoints: IPI frame 0 from the reference's DWPose (``auto``; the driving frame 0 when none is
            detected) or the driving frame 0 (``driving0``, the released behaviour).
        align: driving-pose alignment to the reference (``none`` = official).
        align_frame: the driving frame the alignment parameters are estimated on.
        pose_scale: manual ``(sx, sy)`` applied to the driving poses after alignment.
        pose_offset: manual ``(dx, dy)`` (normalised) applied after alignment.
        cache_dir: where DWPose results are cached by content hash; None = no cache.
    """

    size: tuple[int, int] | None = None
    ref_fit: str = "pad"
    bg: tuple[int, int, int] = (255, 255, 255)
    stride: int | None = None
    target_fps: float | None = None
    start: float = 0.0
    frames: int | None = 32
    source_fps: float | None = None
    pkl: str | None = None
    pose_dir: str | None = None
    ref_keypoints_file: str | None = None
    ref_keypoints: str = "auto"
    align: str = "none"
    align_frame: int = 0
    pose_scale: tuple[float, float] | None = None
    pose_offset: tuple[float, float] | None = None
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.size is not None:
            self.size = (int(self.size[0]), int(self.size[1]))
            _check(
                all(s > 0 and s % 64 == 0 for s in self.size),
                "--size",
                "HEIGHTxWIDTH, multiples of 64",
                self.size,
                "e.g. 768x512 (portrait) or 512x768 (landscape)",
            )
        _check(self.ref_fit in REF_FITS, "--ref_fit", " | ".join(REF_FITS), self.ref_fit)
        _check(len(self.bg) == 3 and all(0 <= c <= 255 for c in self.bg), "--bg", "R,G,B in 0..255", self.bg)
        _check(self.stride is None or self.stride >= 1, "--stride", ">= 1", self.stride)
        _check(self.target_fps is None or self.target_fps > 0, "--target_fps", "> 0", self.target_fps)
        _check(
            self.stride is None or self.target_fps is None,
            "--stride/--target_fps",
            "one of them",
            (self.stride, self.target_fps),
        )
        _check(self.start >= 0, "--start", "seconds >= 0", self.start)
        _check(self.frames is None or self.frames >= 1, "--frames", "N >= 1 or all", self.frames)
        _check(self.source_fps is None or self.source_fps > 0, "--source_fps", "> 0", self.source_fps)
        _check(self.ref_keypoints in REF_KEYPOINTS, "--ref_kp", " | ".join(REF_KEYPOINTS), self.ref_keypoints)
        _check(self.align in ALIGN_MODES, "--align", " | ".join(ALIGN_MODES), self.align)
        _check(self.align_frame >= 0, "--align_frame", ">= 0", self.align_frame)


@dataclass
class SamplingSettings:
    """The sampler, long-video windows, precision and the speed/memory levers.

    Attributes:
        sampler: DDIM steps, guidance scale (1 skips the unconditional pass), eta, grid, final alpha, rescale.
        seed: seed of x_T (and of eta > 0 noise); each manifest job may set its own.
        ref_mode: how the reference enters the UNet: ``local_image`` (released), ``ref_latent`` or ``both``.
        window: frames per window over long videos; None or >= the frame count = one pass (official).
        overlap: frames shared by neighbouring windows.
        fusion: how overlapping windows are averaged: ``uniform`` (UniAnimate) or ``triangular`` (MimicMotion).
        window_tail: the last window ``snap``ped to the end (UniAnimate) or ``pad``ded with the last frame (MusePose).
        window_batch: windows per denoiser call (UniAnimate's ``context_batch_size``; needs equal-length windows).
        noise_prior: tau of UniAnimate's noise prior (x_T leaks the reference latent at level tau; 939 in
            UniAnimate's long mode); None = off (official).
        precision: ``fp32``, ``bf16`` or ``fp16`` for the denoiser (latents and the update stay float32); None
            = bf16 on CUDA, fp32 on CPU.
        device: ``cuda``, ``cpu`` or ``cuda:N``; None = CUDA when available (the local rank's GPU).
        offload: keep CLIP and the VAE on the CPU while sampling (moved to the device only to encode/decode).
        decode_chunk: frames per VAE decoder call (official 2).
        cfg_batch: run the conditional and unconditional branch as one batch of 2: ``on``, ``off``, or
            ``auto`` (on CUDA, falling back to two passes on out-of-memory).
        attention: attention kernel (``models/attention.py``: auto, sdpa, sdpa_flash, flash_attn, math, ...).
    """

    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    seed: int = 0
    ref_mode: str = "local_image"
    window: int | None = None
    overlap: int = 8
    fusion: str = "uniform"
    window_tail: str = "snap"
    window_batch: int = 1
    noise_prior: int | None = None
    precision: str | None = None
    device: str | None = None
    offload: bool = True
    decode_chunk: int = 2
    cfg_batch: str = "auto"
    attention: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.sampler, dict):
            self.sampler = SamplerConfig(**self.sampler)
        _check(self.ref_mode in REF_MODES, "--ref_mode", " | ".join(REF_MODES), self.ref_mode)
        _check(self.window is None or self.window >= 1, "--window", ">= 1 frames", self.window)
        if self.window is not None:
            _check(0 <= self.overlap < self.window, "--overlap", f"in [0, --window={self.window})", self.overlap)
        _check(self.fusion in FUSIONS, "--fusion", " | ".join(FUSIONS), self.fusion)
        _check(self.window_tail in WINDOW_TAILS, "--window_tail", " | ".join(WINDOW_TAILS), self.window_tail)
        _check(self.window_batch >= 1, "--window_batch", ">= 1", self.window_batch)
        _check(
            self.noise_prior is None or 0 <= self.noise_prior <= 999,
            "--noise_prior",
            "a timestep in 0..999",
            self.noise_prior,
            "UniAnimate uses 939",
        )
        _check(
            self.precision is None or self.precision in PRECISIONS,
            "--precision",
            " | ".join(PRECISIONS),
            self.precision,
        )
        _check(self.decode_chunk >= 1, "--decode_chunk", ">= 1 frames", self.decode_chunk)
        _check(self.cfg_batch in CFG_BATCH, "--cfg_batch", " | ".join(CFG_BATCH), self.cfg_batch)


@dataclass
class OutputSettings:
    """What is written next to the video.

    Attributes:
        fps: output frame rate; None = source fps / stride (official mode: 8).
        audio: mux the driving video's audio of the used time range.
        layout: columns of the mp4: ``result``, ``ref-pose-result`` (official 3-column) or
            ``ref-pose-result-source``.
        save_poses: also write ``<out>.poses.mp4`` and ``<out>.keypoints.npy`` (the driving poses as used).
        save_frames: also write every generated frame as ``<out>.frames/%05d.png``.
        align_preview: write the alignment preview PNG here (the reference with its skeleton and the aligned
            ``--align_frame`` pose; ``align_preview.py``).
        progress: progress bars on stderr.
    """

    fps: float | None = None
    audio: bool = True
    layout: str = "result"
    save_poses: bool = False
    save_frames: bool = False
    align_preview: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        _check(self.fps is None or self.fps > 0, "--fps", "> 0", self.fps)
        _check(self.layout in LAYOUTS, "--layout", " | ".join(LAYOUTS), self.layout)


@dataclass
class AnimateSettings:
    """Everything ``animate`` needs besides the two inputs.

    Attributes:
        mode: ``default`` (the fixes below) or ``official`` (the released pipeline exactly: stretch to 768x512,
            8 fps output, reference keypoints from the driving frame 0, two batch-1 forwards, no windows).
        weights: the networks.
        inputs: the inputs' handling.
        sampling: the sampler and the performance levers.
        output: the written files.
    """

    mode: str = "default"
    weights: WeightsSettings = field(default_factory=WeightsSettings)
    inputs: InputSettings = field(default_factory=InputSettings)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    output: OutputSettings = field(default_factory=OutputSettings)

    def __post_init__(self) -> None:
        _check(self.mode in MODES, "--mode", " | ".join(MODES), self.mode)

    def resolved(self) -> AnimateSettings:
        """A copy with ``--mode official`` applied (the released inference's values replace the fixes)."""
        if self.mode != "official":
            return dataclasses.replace(self)
        inputs = dataclasses.replace(
            self.inputs,
            size=OFFICIAL_SIZE,
            ref_fit="stretch",
            align="none",
            pose_scale=None,
            pose_offset=None,
            ref_keypoints="driving0",
            bg=self.inputs.bg,
        )
        sampler = dataclasses.replace(
            self.sampling.sampler, timestep_spacing="official", final_alpha="alpha_0", guidance_rescale=0.0
        )
        sampling = dataclasses.replace(
            self.sampling, sampler=sampler, ref_mode="local_image", window=None, noise_prior=None, cfg_batch="off"
        )
        output = dataclasses.replace(self.output, fps=OFFICIAL_FPS if self.output.fps is None else self.output.fps)
        return dataclasses.replace(self, inputs=inputs, sampling=sampling, output=output)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``meta.json``."""
        return dataclasses.asdict(self)

    def with_overrides(self, overrides: dict[str, Any]) -> AnimateSettings:
        """A copy with dotted-key overrides, e.g. ``{"sampling.seed": 3, "inputs.frames": 16}`` (manifest lines).

        Raises:
            ValueError: an unknown key, named as given.
        """
        data = self.to_dict()
        for key, value in overrides.items():
            node = data
            parts = key.split(".")
            for part in parts[:-1]:
                if not isinstance(node, dict) or part not in node:
                    raise ValueError(f"unknown setting {key!r}; see `animatex-train animate --help` for the keys")
                node = node[part]
            if not isinstance(node, dict) or parts[-1] not in node:
                raise ValueError(f"unknown setting {key!r}; see `animatex-train animate --help` for the keys")
            node[parts[-1]] = value
        return settings_from_dict(data)


def settings_from_dict(data: dict[str, Any]) -> AnimateSettings:
    """Rebuild (and check) ``AnimateSettings`` from ``to_dict`` output."""
    sampling = dict(data.get("sampling", {}))
    sampling["sampler"] = SamplerConfig(**sampling.get("sampler", {}))
    inputs = dict(data.get("inputs", {}))
    for key in ("size", "bg", "pose_scale", "pose_offset"):
        if inputs.get(key) is not None:
            inputs[key] = tuple(inputs[key])
    return AnimateSettings(
        mode=data.get("mode", "default"),
        weights=WeightsSettings(**data.get("weights", {})),
        inputs=InputSettings(**inputs),
        sampling=SamplingSettings(**sampling),
        output=OutputSettings(**data.get("output", {})),
    )
