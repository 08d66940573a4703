"""Sampling a clip from the denoiser: DDIM with classifier-free guidance, then VAE decoding.

Shared by validation, the demo and the ``sample`` command, so all three render the same way.
"""

from __future__ import annotations

import torch

from animatex_train.diffusion.sampling import DDIMSampler
from animatex_train.encoders.vae import FrozenVAE
from animatex_train.models.unet import AnimateXDenoiser, DenoiserConditions


@torch.no_grad()
def sample_latents(denoiser: AnimateXDenoiser, conditions: DenoiserConditions, shape: tuple[int, ...],
                   sampler: DDIMSampler, generator: torch.Generator | None = None, progress: bool = False,
                   ) -> torch.Tensor:  # fmt: skip
    """Model-space latents ``shape = (b, 4, f, h, w)``; the unconditional branch gets every condition None."""
    device = next(denoiser.parameters()).device
    unconditional = DenoiserConditions()

    def cond_fn(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return denoiser(xt, t, conditions)

    def uncond_fn(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return denoiser(xt, t, unconditional)

    noise = None
    if generator is not None and generator.device != device:  # draw x_T on the generator's device, then move
        noise = sampler.diffusion.sample_noise(shape, generator).to(device)
        generator = None
    return sampler.sample(cond_fn, uncond_fn, shape, generator, progress, noise=noise, device=device)


@torch.no_grad()
def decode_frames(vae: FrozenVAE, latents: torch.Tensor) -> torch.Tensor:
    """Model-space latents ``(b, 4, f, h, w)`` -> uint8 frames ``(b, f, H, W, 3)``."""
    b, c, f, h, w = latents.shape
    flat = latents.transpose(1, 2).reshape(b * f, c, h, w).to(next(vae.parameters()).device)
    pixels = vae.decode(flat).float()  # (b*f, 3, H, W) in [-1, 1]
    frames = ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return frames.view(b, f, 3, *frames.shape[-2:]).permute(0, 1, 3, 4, 2).cpu()
