"""FrozenVAE: the SD 2.1 KL autoencoder (diffusers `AutoencoderKL`) for raw latents, scaling and decoding."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, load_single_file_checkpoint
from torch import nn

__all__ = ["SD21_VAE_KWARGS", "TINY_VAE_KWARGS", "FrozenVAE", "VAEConfig"]

# diffusers form of the official `auto_encoder.ddconfig` (configs/Animate_X_infer.yaml): ch 128, ch_mult
# [1, 2, 4, 4], num_res_blocks 2, z_channels 4, embed_dim 4, double_z, attention only in the middle block
# (attn_resolutions []); GroupNorm(32, eps 1e-6) and SiLU are diffusers' defaults. It is written out here
# because `AutoencoderKL.from_single_file` would fetch this config from the Hugging Face Hub, which must never
# happen (offline clusters, HF_HUB_OFFLINE=1).
SD21_VAE_KWARGS: dict[str, object] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
}

# Tests and the CPU demo: the same 4-level layout (3 downsamplings, so 8x) and 4 latent channels, ~0.5 M params.
TINY_VAE_KWARGS: dict[str, object] = {
    **SD21_VAE_KWARGS,
    "block_out_channels": (16, 16, 32, 32),
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
}

_DOWNLOAD_HINT = (
    "Download v2-1_512-ema-pruned.ckpt (the Stable Diffusion 2.1 checkpoint that Animate-X uses; it is in the "
    "Hugging Face repo Shuaishuai0219/Animate-X next to animate-x.pth, and a .safetensors copy is in "
    "stabilityai/stable-diffusion-2-1-base) or a diffusers VAE folder, and set vae.checkpoint to its path."
)


@dataclass
class VAEConfig:
    """Where the frozen VAE comes from and how it is run.

    Attributes:
        checkpoint: Path to the SD 2.1 weights: a single-file LDM checkpoint (``v2-1_512-ema-pruned.ckpt`` or
            ``.safetensors``; the ``first_stage_model.*`` keys are taken and converted with diffusers), a
            standalone LDM VAE file, or a diffusers folder (``config.json``, or a pipeline folder with ``vae/``).
            Required unless ``tiny``; with ``tiny`` it may hold weights of the tiny architecture.
        tiny: Build the tiny architecture (`TINY_VAE_KWARGS`) instead of SD 2.1's, with seeded random weights
            unless ``checkpoint`` is given. For tests and the CPU demo; never touches the network.
        seed: Seed for the tiny random initialisation.
        scale_factor: Raw latent -> model latent multiplier (SD's 0.18215, official `scale_factor`).
        encode_chunk_size: Frames per encoder call (official `chunk_size` 2); bounds activation memory.
        decode_chunk_size: Frames per decoder call (official `decoder_bs` 2).
    """

    checkpoint: str | None = None
    tiny: bool = False
    seed: int = 0
    scale_factor: float = 0.18215
    encode_chunk_size: int = 2
    decode_chunk_size: int = 2

    def __post_init__(self) -> None:
        if self.checkpoint is None and not self.tiny:
            raise ValueError(f"vae.checkpoint is required unless vae.tiny is true. {_DOWNLOAD_HINT}")
        if self.scale_factor <= 0:
            raise ValueError(f"vae.scale_factor must be > 0, got {self.scale_factor} (SD 2.1: 0.18215)")
        for name in ("encode_chunk_size", "decode_chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"vae.{name} must be >= 1, got {getattr(self, name)}")

    def to_model_latents(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw VAE latents -> diffusion-model space: ``raw * scale_factor`` (any shape). The one place the scale is
        applied: the training target, the reference latent and inference all go through it."""
        return raw * self.scale_factor

    def from_model_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Diffusion-model space -> raw VAE latents: ``latents / scale_factor`` (any shape)."""
        return latents / self.scale_factor


class FrozenVAE(nn.Module):
    """The SD 2.1 VAE, frozen: raw posterior in, model-space latents via a scale, pixels out.

    Always in eval mode with ``requires_grad`` off; `train` cannot switch it back. It is an ``nn.Module`` so that
    ``.to(device / dtype)`` works, but it is never trained and never saved with our weights: the system must hold
    it outside its registered (trainable, checkpointed) modules, and ``frozen = True`` marks it for any filter.
    Raw latents are what the offline precompute writes into shards (posterior mean and std); the training step
    samples the posterior and scales into model space (house style rule 8).

    Args:
        config: Where the weights come from and the chunk sizes.

    Raises:
        FileNotFoundError: if ``config.checkpoint`` does not exist.
    """

    frozen: bool = True
    downsample_factor: int = 8

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.model = _build_autoencoder(config)
        self.model.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenVAE:
        """Keep eval mode whatever is asked: a parent's ``.train()`` must not re-enable dropout or norm updates."""
        return super().train(False)

    @property
    def latent_channels(self) -> int:
        """Channels of the latents (4)."""
        return int(self.model.config.latent_channels)

    @property
    def scale_factor(self) -> float:
        """Raw -> model latent multiplier (0.18215)."""
        return self.config.scale_factor

    @torch.no_grad()
    def encode_pixels(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode frames to the raw (unscaled) posterior, in chunks of ``encode_chunk_size`` frames.

        Args:
            frames: Pixels in [-1, 1], shape (n, 3, H, W), H and W multiples of 8.

        Returns:
            Posterior mean and std, each (n, 4, H/8, W/8), float32. std = exp(logvar / 2) with logvar clamped
            to [-30, 20], as in the official `DiagonalGaussianDistribution`.

        Raises:
            ValueError: if the frames do not have shape (n, 3, H, W) or H or W is not a multiple of 8.
        """
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames must be (n, 3, H, W) in [-1, 1], got shape {tuple(frames.shape)}")
        h, w = frames.shape[-2:]
        if h % self.downsample_factor or w % self.downsample_factor:
            raise ValueError(
                f"frame size {h}x{w} (HxW) is not a multiple of {self.downsample_factor} in both sides; set the "
                "frame resolution (clips.resolutions_px when preprocessing: [height, width]) to multiples of 8 "
                "(Animate-X: [768, 512])"
            )
        param = next(self.model.parameters())
        means, stds = [], []
        for chunk in frames.split(self.config.encode_chunk_size):
            posterior = self.model.encode(chunk.to(device=param.device, dtype=param.dtype)).latent_dist
            means.append(posterior.mean.float())
            stds.append(posterior.std.float())
        return torch.cat(means), torch.cat(stds)

    @staticmethod
    def sample_posterior(
        mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw raw latents mean + std * N(0, I); the official encoder samples rather than taking the mode.

        Args:
            mean: Posterior mean, shape (..., 4, h, w).
            std: Posterior std, same shape.
            generator: Random generator (the draw happens on its device); None uses the global RNG.

        Returns:
            Raw latents, same shape, device and dtype as ``mean``.
        """
        device = generator.device if generator is not None else mean.device
        eps = torch.randn(mean.shape, generator=generator, device=device, dtype=mean.dtype)
        return mean + std * eps.to(mean.device)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode model-space latents to pixels, in chunks of ``decode_chunk_size`` frames.

        Args:
            latents: Model-space latents (scaled), shape (n, 4, h, w).

        Returns:
            Pixels, shape (n, 3, 8h, 8w), float32, clamped to [-1, 1] (the decoder overshoots slightly; every
            consumer, from video writing to the metrics, needs the valid range).
        """
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"latents must be (n, {self.latent_channels}, h, w); got shape {tuple(latents.shape)}. "
                "Fold frames into n first, e.g. rearrange 'b c f h w -> (b f) c h w'."
            )
        param = next(self.model.parameters())
        raw = self.config.from_model_latents(latents)
        frames = [
            self.model.decode(chunk.to(device=param.device, dtype=param.dtype)).sample.float().clamp(-1.0, 1.0)
            for chunk in raw.split(self.config.decode_chunk_size)
        ]
        return torch.cat(frames)


def _build_autoencoder(config: VAEConfig) -> AutoencoderKL:
    kwargs = dict(TINY_VAE_KWARGS if config.tiny else SD21_VAE_KWARGS, scaling_factor=config.scale_factor)
    if config.checkpoint is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            return AutoencoderKL(**kwargs)
    path = Path(config.checkpoint).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"vae.checkpoint points to {str(path)!r}, which does not exist. {_DOWNLOAD_HINT}")
    if path.is_dir():
        return _load_diffusers_folder(path, config)
    model = AutoencoderKL(**kwargs)
    try:
        # diffusers' loader: safetensors, or torch.load(weights_only=True) -- never unrestricted unpickling.
        checkpoint = load_single_file_checkpoint(str(path), local_files_only=True)
    except Exception as error:  # diffusers wraps the unpickling error in OSError / ValueError
        raise OSError(
            f"vae.checkpoint {str(path)!r} could not be read as a weights-only checkpoint ({error}). A .ckpt that "
            "pickles Python objects beyond tensors is refused for safety; use the .safetensors release or "
            "re-save only its state_dict."
        ) from error
    state_dict = convert_ldm_vae_checkpoint(checkpoint, model.config)
    if not state_dict:
        raise ValueError(
            f"vae.checkpoint {str(path)!r} holds no LDM VAE weights (no 'first_stage_model.*' or 'encoder.down.*' "
            "keys). Point it at v2-1_512-ema-pruned.ckpt/.safetensors or at a diffusers VAE folder."
        )
    model.load_state_dict(state_dict, strict=True)
    return model


def _load_diffusers_folder(path: Path, config: VAEConfig) -> AutoencoderKL:
    subfolder = "vae" if not (path / "config.json").exists() and (path / "vae" / "config.json").exists() else None
    if subfolder is None and not (path / "config.json").exists():
        raise FileNotFoundError(
            f"vae.checkpoint folder {str(path)!r} has neither config.json nor vae/config.json. {_DOWNLOAD_HINT}"
        )
    model = AutoencoderKL.from_pretrained(str(path), subfolder=subfolder, local_files_only=True)
    folder_scale = float(model.config.scaling_factor)
    if abs(folder_scale - config.scale_factor) > 1e-8:
        warnings.warn(
            f"The VAE folder's scaling_factor {folder_scale} differs from vae.scale_factor {config.scale_factor}; "
            "vae.scale_factor is used.",
            stacklevel=3,
        )
    return model


@torch.no_grad()
def decode_frames(vae: FrozenVAE, latents: torch.Tensor) -> torch.Tensor:
    """Model-space latents ``(b, 4, f, h, w)`` -> uint8 frames ``(b, f, H, W, 3)`` on the CPU."""
    b, c, f, h, w = latents.shape
    flat = latents.transpose(1, 2).reshape(b * f, c, h, w).to(next(vae.parameters()).device)
    pixels = vae.decode(flat)  # (b * f, 3, H, W) in [-1, 1]
    frames = ((pixels + 1) * 127.5).round().to(torch.uint8)
    return frames.view(b, f, 3, *frames.shape[-2:]).permute(0, 1, 3, 4, 2).cpu()
