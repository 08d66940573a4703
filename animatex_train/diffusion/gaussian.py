"""GaussianDiffusion: forward noising with offset noise, v-prediction target and the per-sample training loss."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from animatex_train.diffusion.schedule import (
    alphas_cumprod_from_betas,
    sample_uniform_timesteps,
    sd_linear_betas,
    zero_terminal_snr_betas,
)

__all__ = ["DenoiseFn", "DiffusionConfig", "GaussianDiffusion", "TrainingLossInfo"]

DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(xt (b, c, f, h, w), t (b,) int64) -> v_pred (b, c, f, h, w)``; the caller closes over the conditions."""


@dataclass
class DiffusionConfig:
    """Settings of the training diffusion process. Defaults are the official Animate-X values.

    Attributes:
        num_train_timesteps: T, number of discrete training timesteps.
        beta_start: First beta of the SD "scaled linear" schedule.
        beta_end: Last beta of that schedule before the zero-terminal-SNR rescale.
        zero_terminal_snr: Rescale the schedule so alpha_bar_{T-1} = 0 (Lin et al. 2024), as the official config
            does. With it, t = T - 1 is pure noise.
        prediction: What the network predicts. Only "v" (Salimans & Ho 2022), the official `mean_type`.
            eps-prediction is not offered: with zero terminal SNR, x0 = (xt - sqrt(1 - alpha_bar) eps) /
            sqrt(alpha_bar) is undefined at t = T - 1, which is why Lin et al. pair the rescale with v.
        offset_noise_strength: Weight of the offset-noise term: noise = N(0, I) + strength * N(0, 1) with one
            offset per (sample, channel, frame); the official `noise_strength` (0.1). 0 disables it.
        loss: Regression loss on v. Only "mse" (the official `loss_type`).
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    zero_terminal_snr: bool = True
    prediction: str = "v"
    offset_noise_strength: float = 0.1
    loss: str = "mse"

    def __post_init__(self) -> None:
        if self.num_train_timesteps < 2:
            raise ValueError(f"diffusion.num_train_timesteps must be >= 2, got {self.num_train_timesteps}")
        if not 0.0 < self.beta_start < self.beta_end < 1.0:
            raise ValueError(
                "diffusion.beta_start and diffusion.beta_end must satisfy 0 < beta_start < beta_end < 1, got "
                f"beta_start={self.beta_start}, beta_end={self.beta_end} (Animate-X: 0.00085 and 0.012)"
            )
        if self.prediction != "v":
            raise ValueError(
                f"diffusion.prediction must be 'v', got {self.prediction!r}: Animate-X is trained with "
                "v-prediction, and eps-prediction is ill-posed at the zero-SNR last timestep."
            )
        if self.offset_noise_strength < 0.0:
            raise ValueError(
                f"diffusion.offset_noise_strength must be >= 0, got {self.offset_noise_strength} (official: 0.1)"
            )
        if self.loss != "mse":
            raise ValueError(f"diffusion.loss must be 'mse' (the official loss_type), got {self.loss!r}")


@dataclass(frozen=True)
class TrainingLossInfo:
    """What `GaussianDiffusion.training_loss` drew, for logging (e.g. loss per timestep bucket).

    Attributes:
        t: The timesteps used, shape (b,), int64, aligned with the per-sample loss.
    """

    t: torch.Tensor


class GaussianDiffusion:
    """The Animate-X training diffusion: SD linear schedule with zero terminal SNR, offset noise, v-MSE.

    Holds no parameters. The schedule tables are float64 on the CPU and copied (once per device) on first use;
    each coefficient is cast to the dtype of the tensor it multiplies, as the official `_i` helper does, so
    the float64 precision is kept where the tables are built and nowhere slower.

    Args:
        config: The settings; None uses the official defaults.
    """

    def __init__(self, config: DiffusionConfig | None = None) -> None:
        self.config = config if config is not None else DiffusionConfig()
        cfg = self.config
        betas = sd_linear_betas(cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end)
        if cfg.zero_terminal_snr:
            betas = zero_terminal_snr_betas(betas)
        self.betas = betas
        self.alphas_cumprod = alphas_cumprod_from_betas(betas)
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self._device_tables: dict[tuple[str, torch.device], torch.Tensor] = {}

    @property
    def num_train_timesteps(self) -> int:
        """T, the number of training timesteps."""
        return self.config.num_train_timesteps

    def coefficient(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Gather a schedule table at ``t``, shaped to broadcast against ``like``.

        Args:
            name: "alphas_cumprod", "sqrt_alphas_cumprod" or "sqrt_one_minus_alphas_cumprod".
            t: Timesteps, shape (b,), int64.
            like: Tensor of shape (b, ...) whose device and dtype the result takes.

        Returns:
            Shape (b, 1, ..., 1) with ``like.ndim`` dims.
        """
        key = (name, like.device)
        table = self._device_tables.get(key)
        if table is None:
            table = getattr(self, name).to(like.device)
            self._device_tables[key] = table
        shape = (t.shape[0],) + (1,) * (like.ndim - 1)
        return table[t.to(like.device)].view(shape).to(like.dtype)

    def sample_timesteps(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Uniform training timesteps in [0, T - 1], shape (b,), int64 (drawn on the generator's device)."""
        return sample_uniform_timesteps(batch_size, self.num_train_timesteps, generator, device)

    def sample_noise(
        self,
        shape: tuple[int, int, int, int, int] | torch.Size,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Offset noise: N(0, I) plus ``offset_noise_strength`` * N(0, 1) shared over (h, w).

        One offset per (sample, channel, frame), drawn after the per-element noise, as the official
        `sample_loss` and the inference entry point do. It is used for training and for the sampler's x_T.

        Args:
            shape: (b, c, f, h, w).
            generator: Random generator; None uses the global RNG.
            device: Where to draw; defaults to the generator's device (CPU without a generator).
            dtype: Output dtype.

        Returns:
            Noise, shape (b, c, f, h, w).
        """
        if len(shape) != 5:
            raise ValueError(f"noise shape must be (b, c, f, h, w), got {tuple(shape)}")
        if device is None:
            device = generator.device if generator is not None else "cpu"
        noise = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
        if self.config.offset_noise_strength > 0:
            b, c, f = shape[:3]
            offset = torch.randn((b, c, f, 1, 1), generator=generator, device=device, dtype=dtype)
            noise = noise + self.config.offset_noise_strength * offset
        return noise

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """xt = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (DDPM forward process, q(xt | x0)).

        Args:
            x0: Clean latents, shape (b, c, f, h, w).
            noise: eps, same shape.
            t: Timesteps, shape (b,).

        Returns:
            xt, same shape and dtype as ``x0``.
        """
        return (
            self.coefficient("sqrt_alphas_cumprod", t, x0) * x0
            + self.coefficient("sqrt_one_minus_alphas_cumprod", t, x0) * noise
        )

    def velocity_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0 (Salimans & Ho 2022; UniAnimate `loss()`).

        Args:
            x0: Clean latents, shape (b, c, f, h, w).
            noise: eps, same shape.
            t: Timesteps, shape (b,).

        Returns:
            v, same shape as ``x0``.
        """
        return (
            self.coefficient("sqrt_alphas_cumprod", t, x0) * noise
            - self.coefficient("sqrt_one_minus_alphas_cumprod", t, x0) * x0
        )

    def predict_x0(self, xt: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """x0 = sqrt(alpha_bar_t) xt - sqrt(1 - alpha_bar_t) v (the official `mean_type == 'v'` branch).

        Args:
            xt: Noisy latents, shape (b, c, f, h, w).
            t: Timesteps, shape (b,).
            v: Predicted velocity, same shape as ``xt``.

        Returns:
            x0, same shape and dtype as ``xt``.
        """
        sqrt_alpha_bar = self.coefficient("sqrt_alphas_cumprod", t, xt)
        sqrt_one_minus_alpha_bar = self.coefficient("sqrt_one_minus_alphas_cumprod", t, xt)
        return sqrt_alpha_bar * xt - sqrt_one_minus_alpha_bar * v.to(xt.dtype)

    def predict_eps(self, xt: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """eps = sqrt(1 - alpha_bar_t) xt + sqrt(alpha_bar_t) v.

        The official sampler derives eps from x0 as (xt / sqrt(alpha_bar) - x0) / sqrt(1 / alpha_bar - 1); that
        is the same quantity algebraically, but it divides by sqrt(alpha_bar) (0 at t = T - 1 with zero terminal
        SNR, 4e-3 at t = 991) and cancels large terms in low precision. This form has neither problem.

        Args:
            xt: Noisy latents, shape (b, c, f, h, w).
            t: Timesteps, shape (b,).
            v: Predicted velocity, same shape as ``xt``.

        Returns:
            eps, same shape and dtype as ``xt``.
        """
        sqrt_alpha_bar = self.coefficient("sqrt_alphas_cumprod", t, xt)
        sqrt_one_minus_alpha_bar = self.coefficient("sqrt_one_minus_alphas_cumprod", t, xt)
        return sqrt_one_minus_alpha_bar * xt + sqrt_alpha_bar * v.to(xt.dtype)

    def training_loss(
        self,
        denoise_fn: DenoiseFn,
        x0: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, TrainingLossInfo]:
        """Per-sample v-prediction MSE, as UniAnimate's `DiffusionDDIM.loss()` (mean_type v, loss_type mse).

        Draws t ~ U{0, ..., T-1} and then offset noise (in that order, from ``generator``), builds xt and the
        v target, calls ``denoise_fn(xt, t)``, and averages the squared error over all elements of each sample
        (``flatten(1).mean(1)``). The caller takes the batch mean.

        Args:
            denoise_fn: ``(xt, t) -> v_pred`` with v_pred of shape (b, c, f, h, w); it closes over the conditions.
            x0: Clean model-space latents, shape (b, c, f, h, w).
            generator: Random generator for t and the noise (exact resume depends on it); None uses the
                global RNG.
            t: Timesteps to use instead of drawing them, shape (b,), int64.
            noise: Noise to use instead of drawing it, same shape as ``x0``.

        Returns:
            The loss per sample, shape (b,), float32 (the error is squared and averaged in float32 whatever
            the network's output dtype, so half-precision outputs do not lose the small residuals), and the
            info holding ``t``.
        """
        if x0.ndim != 5:
            raise ValueError(f"x0 must be (b, c, f, h, w), got shape {tuple(x0.shape)}")
        b = x0.shape[0]
        device = x0.device
        if t is None:
            t = self.sample_timesteps(b, generator, device=generator.device if generator is not None else device)
        t = t.to(device)
        if noise is None:
            gen_device = generator.device if generator is not None else device
            noise = self.sample_noise(x0.shape, generator, device=gen_device, dtype=x0.dtype)
        noise = noise.to(device=device, dtype=x0.dtype)
        xt = self.add_noise(x0, noise, t)
        target = self.velocity_target(x0, noise, t)
        v_pred = denoise_fn(xt, t)
        if v_pred.shape != x0.shape:
            raise ValueError(f"denoise_fn returned shape {tuple(v_pred.shape)}, expected {tuple(x0.shape)}")
        loss = (v_pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)
        return loss, TrainingLossInfo(t=t)
