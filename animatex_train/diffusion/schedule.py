"""Noise schedules and timestep grids: SD linear betas, zero-terminal-SNR rescale, official DDIM spacing."""

from __future__ import annotations

import torch

# Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Algorithm 1. diffusers'
# function is the same sequence of float operations as the official `animatex/diffusion/schedules.py`, and it
# keeps the dtype of its input, so it reproduces the official float64 numbers bit for bit (tested).
from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr

__all__ = [
    "alphas_cumprod_from_betas",
    "ddim_timesteps",
    "trailing_timesteps",
    "rescale_zero_terminal_snr",
    "sample_uniform_timesteps",
    "sd_linear_betas",
    "zero_terminal_snr_betas",
]


def sd_linear_betas(num_train_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """Stable Diffusion's "scaled linear" betas: linear in sqrt(beta), then squared.

    This is the official `linear_sd` schedule (`beta_t = linspace(sqrt(beta_start), sqrt(beta_end), T) ** 2`).

    Args:
        num_train_timesteps: T, the number of training timesteps (1000 in Animate-X).
        beta_start: beta_0 (0.00085 in Animate-X).
        beta_end: beta_{T-1} before any rescale (0.012 in Animate-X).

    Returns:
        Betas, shape (T,), float64. float64 because the cumulative product over 1000 steps and the rescale below
        lose digits in float32 (1 - alpha_bar_0 is 8.5e-4 and alpha_bar near T is ~1e-5); the official code
        keeps every schedule table in float64 as well.
    """
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2


def zero_terminal_snr_betas(betas: torch.Tensor) -> torch.Tensor:
    """Rescale betas so that alpha_bar at the last timestep is exactly zero (pure noise at t = T - 1).

    sqrt(alpha_bar) is shifted so its last value is 0 and scaled so its first value is unchanged (Lin et al.
    2024, Algorithm 1). Like the official `beta_schedule(..., zero_terminal_snr=True)`, a schedule whose
    largest beta is already 1 (within 1e-4) is returned unchanged.

    Args:
        betas: Betas, shape (T,), float64.

    Returns:
        Rescaled betas, shape (T,), same dtype; the last one is 1.
    """
    if abs(float(betas.max()) - 1.0) <= 1e-4:
        return betas.clone()
    return rescale_zero_terminal_snr(betas)


def alphas_cumprod_from_betas(betas: torch.Tensor) -> torch.Tensor:
    """alpha_bar_t = prod_{s <= t} (1 - beta_s), shape (T,), same dtype as ``betas``."""
    return torch.cumprod(1.0 - betas, dim=0)


def sample_uniform_timesteps(
    batch_size: int,
    num_train_timesteps: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Training timesteps, uniform integers in [0, T - 1] (VGen's `randint(0, num_timesteps)`).

    Args:
        batch_size: b, the number of timesteps to draw.
        num_train_timesteps: T.
        generator: Random generator; the draw happens on its device. None uses the global RNG.
        device: Where to draw; defaults to the generator's device (CPU without a generator).

    Returns:
        Timesteps, shape (b,), int64.
    """
    if device is None:
        device = generator.device if generator is not None else "cpu"
    return torch.randint(0, num_train_timesteps, (batch_size,), generator=generator, device=device)


def ddim_timesteps(num_train_timesteps: int, num_steps: int) -> torch.Tensor:
    """The official DDIM timestep grid, in the order the sampler visits it (descending).

    `ddim_sample_loop` in the official `diffusion_ddim.py` uses ``1 + arange(0, T, T // n)``, clamped to
    [0, T - 1] and reversed. ``arange`` overshoots when T is not a multiple of n, so n = 30 gives 31 entries
    {991, 958, ..., 34, 1}: stride 33, t = T - 1 is never visited and t = 1 is the last one. Clamping can repeat
    T - 1 for large n (e.g. n = T); that is kept, as officially. diffusers' "leading" spacing with steps_offset=1
    gives only 30 entries {958, ..., 1} for n = 30, so it is not used.

    Args:
        num_train_timesteps: T.
        num_steps: n, the configured number of DDIM steps (1 <= n <= T).

    Returns:
        Timesteps, shape (len,), int64, descending. len is ceil(T / (T // n)), e.g. 31 for T = 1000, n = 30.

    Raises:
        ValueError: if num_steps is outside [1, T].
    """
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(
            f"num_steps must be in [1, num_train_timesteps={num_train_timesteps}], got {num_steps}; "
            "set sampler.num_steps (Animate-X uses 30)."
        )
    stride = num_train_timesteps // num_steps
    steps = 1 + torch.arange(0, num_train_timesteps, stride, dtype=torch.int64)
    return steps.clamp(0, num_train_timesteps - 1).flip(0)


def trailing_timesteps(num_train_timesteps: int, num_steps: int) -> torch.Tensor:
    """The "trailing" DDIM grid of Lin et al. 2024 (Table 2), as diffusers' ``timestep_spacing="trailing"``.

    ``round(arange(T, 0, -T / n)) - 1``: n timesteps that start at T - 1, the zero-SNR step the official grid
    never visits, so sampling starts from pure noise as the zero-terminal-SNR schedule intends.

    Args:
        num_train_timesteps: T.
        num_steps: n (1 <= n <= T).

    Returns:
        Timesteps, shape (n,), int64, descending, e.g. {999, 966, 932, ..., 32} for T = 1000, n = 30.
    """
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(
            f"num_steps must be in [1, num_train_timesteps={num_train_timesteps}], got {num_steps}; "
            "set sampler.num_steps (Animate-X uses 30)."
        )
    ratio = num_train_timesteps / num_steps
    # float64 numpy-style arange then round-half-to-even, exactly diffusers' arithmetic
    steps = torch.arange(num_train_timesteps, 0, -ratio, dtype=torch.float64).round().to(torch.int64) - 1
    return steps
