"""The loaded networks of an ``animate`` process, where they run, and in which precision.

``load_models`` builds everything once (a batch of jobs reuses it): the denoiser (``weights.load_denoiser``),
the frozen VAE and CLIP, DWPose when its files are given, and the empty-prompt tokens. The encoders live on the
CPU between uses when ``offload`` is on, so sampling has the device to itself (the released ``CPU_CLIP_VAE``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from animatex_train.diffusion.gaussian import GaussianDiffusion
from animatex_train.encoders.clip import CLIPConfig, FrozenCLIPImageEncoder
from animatex_train.encoders.vae import FrozenVAE, VAEConfig
from animatex_train.inference.poses import PoseCache
from animatex_train.inference.settings import WeightsSettings
from animatex_train.inference.weights import LoadedDenoiser, load_denoiser
from animatex_train.models.unet import AnimateXDenoiser

log = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | None) -> torch.device:
    """``device``, or the local rank's GPU when CUDA is available (torchrun/Slurm set ``LOCAL_RANK``), or the CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))
        return torch.device("cuda", local % torch.cuda.device_count())
    return torch.device("cpu")


def resolve_precision(precision: str | None, device: torch.device, official: bool) -> str:
    """``precision``, or fp16 (official, the released run) / bf16 on CUDA, fp32 on the CPU."""
    if precision is not None:
        return precision
    if device.type != "cuda":
        return "fp32"
    return "fp16" if official else "bf16"


@dataclass
class AnimateModels:
    """Everything ``animate`` runs.

    Attributes:
        denoiser: the loaded denoiser and its provenance.
        vae: the frozen VAE.
        clip: the frozen CLIP image encoder (text tower released after the empty-prompt tokens).
        pose: DWPose, or None (keypoints must then come from ``--pkl``).
        pose_cache: where DWPose results are cached.
        diffusion: the schedule.
        device: where sampling runs.
        precision: ``fp32``, ``bf16`` or ``fp16`` of the denoiser.
        offload: keep the encoders on the CPU between uses.
    """

    denoiser: LoadedDenoiser
    vae: FrozenVAE
    clip: FrozenCLIPImageEncoder
    pose: object | None
    pose_cache: PoseCache
    diffusion: GaussianDiffusion
    device: torch.device
    precision: str
    offload: bool

    @property
    def net(self) -> AnimateXDenoiser:
        return self.denoiser.model

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]

    @contextlib.contextmanager
    def on_device(self, encoder: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """``encoder`` on the sampling device for the block; back on the CPU afterwards when offloading."""
        encoder.to(self.device)
        try:
            yield encoder
        finally:
            if self.offload and self.device.type != "cpu":
                encoder.to("cpu")

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for the denoiser's forward (weights are already in ``dtype``)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


def load_models(
    weights: WeightsSettings,
    *,
    device: str | None = None,
    precision: str | None = None,
    official: bool = False,
    offload: bool = True,
    decode_chunk: int = 2,
    cache_dir: str | None = None,
    attention: str = "auto",
) -> AnimateModels:
    """Build and load every network (see the module doc)."""
    from animatex_train.models.attention import set_attention_backend

    set_attention_backend(attention)
    target = resolve_device(device)
    chosen = resolve_precision(precision, target, official)
    if chosen not in DTYPES:
        raise ValueError(f"--precision: expected fp32, bf16 or fp16, got {chosen!r}")
    if target.type == "cpu" and chosen == "fp16":
        raise ValueError("--precision fp16 needs a CUDA device (CPU kernels lack half precision); use bf16 or fp32")
    loaded = load_denoiser(
        weights.checkpoint, weights.weights, weights.model_config, weights.tiny, weights.trust_checkpoint
    )
    net = loaded.model
    context_dim = net.config.context_dim
    clip = FrozenCLIPImageEncoder(
        CLIPConfig(checkpoint=weights.clip, tiny=weights.tiny and weights.clip is None, tiny_embed_dim=context_dim)
    )
    if clip.embed_dim != context_dim or (net.ipi is not None and clip.embed_dim != net.config.ipi.clip_dim):
        raise ValueError(
            f"--clip: the CLIP model gives {clip.embed_dim}-wide embeddings, the denoiser expects "
            f"context_dim {context_dim} and IPI clip_dim {net.config.ipi.clip_dim} (ViT-H-14: 1024)"
        )
    net.set_empty_prompt_tokens(clip.empty_prompt_tokens())
    clip.release_text_tower()
    vae = FrozenVAE(
        VAEConfig(checkpoint=weights.vae, tiny=weights.tiny and weights.vae is None, decode_chunk_size=decode_chunk)
    )
    pose = None
    model_files: tuple[str, ...] = ()
    if weights.dwpose_det is not None:
        from pathlib import Path

        from animatex_train.preprocess.pose.dwpose import DWPoseEstimator

        pose = DWPoseEstimator(
            Path(weights.dwpose_det).expanduser(),
            Path(weights.dwpose_pose).expanduser(),
            device="cuda" if target.type == "cuda" else "cpu",
            keep_face=False,
        )
        model_files = (weights.dwpose_det, weights.dwpose_pose)
    net.to(device=target, dtype=DTYPES[chosen])
    if not offload or target.type == "cpu":
        clip.to(target)
        vae.to(target)
    log.info("animate: denoiser on %s in %s; encoders %s", target, chosen, "offloaded" if offload else "resident")
    return AnimateModels(
        denoiser=loaded,
        vae=vae,
        clip=clip,
        pose=pose,
        pose_cache=PoseCache(cache_dir, model_files),
        diffusion=GaussianDiffusion(),
        device=target,
        precision=chosen,
        offload=offload,
    )


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak memory so far: the device's allocator peak on CUDA, the process's max RSS on the CPU (GiB)."""
    out: dict[str, float] = {}
    if device.type == "cuda":
        out["cuda_max_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        out["cuda_max_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
    try:
        import resource

        out["cpu_max_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    except (ImportError, OSError):
        pass
    return out
