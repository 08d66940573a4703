"""From conditions to latents: x_T, the model function (one pass or windows), guidance, the DDIM loop.

The model function has the signature ``(x (b, c, f, h, w), t (b,), conditions | None) -> v`` whether it is the
denoiser itself or ``windows.WindowedDenoiser`` over it, so the loop does not know about windows. The
unconditional branch is ``conditions=None`` (every condition absent, as released). With ``cfg_batch`` both
branches go through one call on a batch of two (``conditions.guidance_batch``); otherwise, as released, two
batch-1 calls per step, conditional first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from animatex_train.diffusion.gaussian import GaussianDiffusion
from animatex_train.diffusion.sampling import DDIMSampler, SamplerConfig
from animatex_train.inference.conditions import guidance_batch
from animatex_train.models.unet import DenoiserConditions

log = logging.getLogger(__name__)
ModelFn = Callable[[torch.Tensor, torch.Tensor, DenoiserConditions | None], torch.Tensor]


def initial_noise(
    diffusion: GaussianDiffusion,
    shape: tuple[int, ...],
    seed: int,
    ref_latent: torch.Tensor | None = None,
    noise_prior: int | None = None,
) -> torch.Tensor:
    """x_T on the CPU from ``seed`` (the same on any device): N(0, I) + 0.1 offset noise, as released.

    With ``noise_prior`` tau (UniAnimate's long mode, docs/inference.md), the reference latent leaks in:
    x_T = sqrt(ab_tau) z_ref + sqrt(1 - ab_tau) eps + 0.1 eps_offset, z_ref repeated over the frames.

    Args:
        diffusion: the schedule and the offset-noise strength.
        shape: ``(b, c, f, h, w)``.
        seed: the job's seed.
        ref_latent: ``(b, c, 1, h, w)`` model-space reference latent (needed for ``noise_prior``).
        noise_prior: tau, or None.
    """
    generator = torch.Generator().manual_seed(int(seed))
    if noise_prior is None:
        return diffusion.sample_noise(shape, generator)
    if ref_latent is None:
        raise ValueError("--noise_prior needs the reference latent")
    from animatex_train.inference.windows import noise_prior as apply_prior

    eps = torch.randn(shape, generator=generator)  # drawn as sample_noise draws: eps, then the offset
    offset = torch.randn((*shape[:3], 1, 1), generator=generator)
    return apply_prior(
        eps,
        ref_latent.detach().to("cpu", torch.float32),
        diffusion.alphas_cumprod,
        int(noise_prior),
        offset,
        diffusion.config.offset_noise_strength,
        variant="long",
    ).float()


@dataclass
class SamplingRecord:
    """What the loop did, for ``meta.json``.

    Attributes:
        timesteps: the evaluated timesteps in order.
        network_calls: denoiser calls (a batched guidance call counts once).
        cfg_batched: whether the branches shared a batch.
        fallback: why batching was abandoned, if it was.
    """

    timesteps: list[int] = field(default_factory=list)
    network_calls: int = 0
    cfg_batched: bool = False
    fallback: str | None = None


def generate_latents(
    model_fn: ModelFn,
    conditions: DenoiserConditions,
    noise: torch.Tensor,
    diffusion: GaussianDiffusion,
    sampler: SamplerConfig,
    *,
    cfg_batch: str = "off",
    device: torch.device | str = "cpu",
    progress: bool = False,
    seed: int = 0,
    record: SamplingRecord | None = None,
) -> torch.Tensor:
    """Run DDIM with classifier-free guidance from ``noise``; returns model-space latents ``(b, c, f, h, w)``.

    Args:
        model_fn: the denoiser or a windowed denoiser (see the module doc).
        conditions: the conditional branch (batch 1).
        noise: x_T, float32.
        diffusion: the schedule.
        sampler: steps, guidance, eta, grid, final alpha, rescale.
        cfg_batch: ``on`` / ``off`` / ``auto`` (``auto`` batches on CUDA and falls back to two passes when the
            batch runs out of memory).
        device: where the loop runs.
        progress: a progress bar over the steps.
        seed: seeds the CPU generator of the eta > 0 step noise (unused at eta 0).
        record: filled with the evaluated timesteps and call counts.
    """
    record = record if record is not None else SamplingRecord()
    ddim = DDIMSampler(diffusion, sampler)
    guided = sampler.guidance_scale != 1.0
    batched = guided and (cfg_batch == "on" or (cfg_batch == "auto" and torch.device(device).type == "cuda"))
    record.cfg_batched = batched
    pair = guidance_batch(conditions) if batched else None

    def cond_fn(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        record.timesteps.append(int(t[0]))
        record.network_calls += 1
        return model_fn(xt, t, conditions).float()

    def uncond_fn(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        record.network_calls += 1
        return model_fn(xt, t, None).float()

    def paired_fn(xt: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal batched
        if batched:
            try:
                out = model_fn(torch.cat([xt, xt]), torch.cat([t, t]), pair).float()
                record.timesteps.append(int(t[0]))
                record.network_calls += 1
                return out[: xt.shape[0]], out[xt.shape[0] :]
            except torch.cuda.OutOfMemoryError:
                if cfg_batch == "on":
                    raise
                batched, record.cfg_batched = False, False
                record.fallback = "out of memory with both guidance branches in one batch: two passes per step"
                log.warning(record.fallback)
                torch.cuda.empty_cache()
        return cond_fn(xt, t), uncond_fn(xt, t)

    noise = noise.to(device=device, dtype=torch.float32)
    shape = tuple(noise.shape)
    # The step noise of eta > 0 comes from its own CPU generator: the same draws on any device.
    generator = torch.Generator().manual_seed(int(seed) + 1)
    options = dict(progress=progress, noise=noise, device=device)
    if not guided:
        return ddim.sample(cond_fn, None, shape, generator, **options)
    if batched:
        return ddim.sample_paired(paired_fn, shape, generator, **options)
    return ddim.sample(cond_fn, uncond_fn, shape, generator, **options)
