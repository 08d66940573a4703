"""DDIM sampling with classifier-free guidance on the v output, following the official Animate-X sampler."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from animatex_train.diffusion.gaussian import DenoiseFn, GaussianDiffusion
from animatex_train.diffusion.schedule import ddim_timesteps, trailing_timesteps

__all__ = ["DDIMSampler", "PairedDenoiseFn", "SamplerConfig", "rescale_guidance"]

PairedDenoiseFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``(xt, t) -> (v_cond, v_uncond)``, e.g. one network call on a doubled batch, split in two."""


TIMESTEP_SPACINGS = ("official", "trailing")
FINAL_ALPHAS = ("alpha_0", "one")


@dataclass
class SamplerConfig:
    """Settings of the DDIM sampler. Defaults are the official inference values.

    Attributes:
        num_steps: Configured DDIM steps n (official `ddim_timesteps` 30; the paper says 50). The official grid
            visits ceil(T / (T // n)) timesteps, i.e. 31 network evaluations for n = 30 (see `ddim_timesteps`).
        eta: DDIM stochasticity in [0, 1] (0 = deterministic DDIM, as officially used; 1 = DDPM's posterior
            variance). Above 1 the step's noise variance exceeds 1 - alpha_bar_prev and the update is NaN.
        guidance_scale: Classifier-free guidance scale s on the v output, v = u + s (c - u) (official
            `guide_scale` 2.5). 1 disables guidance and skips the unconditional call.
        timestep_spacing: "official": the official grid {991, 958, ..., 1} (`ddim_timesteps`); "trailing": Lin et
            al. 2024's grid {999, 966, ..., 32} (`trailing_timesteps`, diffusers' "trailing"), which starts at the
            zero-SNR step.
        final_alpha: alpha_bar used when a step's previous timestep t - T // n falls below 0 (the last step):
            "alpha_0" (official, and diffusers' ``set_alpha_to_one=False``) leaves a sqrt(1 - alpha_bar_0) = 0.03
            eps term in the result; "one" returns the x0 prediction itself (``set_alpha_to_one=True``).
        guidance_rescale: phi in [0, 1] of Lin et al. 2024 section 3.4 (diffusers' ``guidance_rescale``): the
            guided v is rescaled to the conditional v's standard deviation and mixed, phi * rescaled +
            (1 - phi) * guided. 0 (official) leaves guidance unchanged.
    """

    num_steps: int = 30
    eta: float = 0.0
    guidance_scale: float = 2.5
    timestep_spacing: str = "official"
    final_alpha: str = "alpha_0"
    guidance_rescale: float = 0.0

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"sampler.num_steps must be >= 1, got {self.num_steps} (Animate-X uses 30)")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(
                f"sampler.eta must be in [0, 1] (0 = deterministic DDIM, 1 = DDPM variance), got {self.eta}; "
                "above 1 the DDIM step takes the square root of a negative number"
            )
        if self.guidance_scale < 0.0:
            raise ValueError(
                f"sampler.guidance_scale must be >= 0 (1 = no guidance, Animate-X uses 2.5), got {self.guidance_scale}"
            )
        if self.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(
                f"sampler.timestep_spacing must be one of {', '.join(TIMESTEP_SPACINGS)}, got "
                f"{self.timestep_spacing!r} (official: the released grid)"
            )
        if self.final_alpha not in FINAL_ALPHAS:
            raise ValueError(
                f"sampler.final_alpha must be one of {', '.join(FINAL_ALPHAS)}, got {self.final_alpha!r} "
                "(alpha_0 is the official last step)"
            )
        if not 0.0 <= self.guidance_rescale <= 1.0:
            raise ValueError(f"sampler.guidance_rescale must be in [0, 1] (0 = off), got {self.guidance_rescale}")


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Lin et al. 2024 eq. 15-16: match the guided prediction's per-sample std to the conditional one's, mix by phi.

    Args:
        guided: u + s (c - u), shape (b, ...).
        cond: c, same shape.
        phi: mixing weight in [0, 1].

    Returns:
        phi * guided * std(c) / std(guided) + (1 - phi) * guided, same shape.
    """
    dims = list(range(1, guided.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return phi * rescaled + (1.0 - phi) * guided


class DDIMSampler:
    """DDIM (Song et al. 2021) over the official timestep grid, with CFG on the predicted v.

    The update is written by hand rather than taken from diffusers' `DDIMScheduler` because (1) the official
    grid {991, 958, ..., 1} has one more entry than `DDIMScheduler.set_timesteps(30)` produces and the scheduler
    takes no custom timesteps, and (2) the scheduler builds its tables in float32, the official code in float64.
    The step itself is the same formula, checked against `DDIMScheduler.step` in the tests.

    Official rule kept exactly: alpha_bar_prev = alpha_bar[max(t - stride, 0)] with stride = T // n, so the last
    step (t = 1) lands on alpha_bar_0 = 0.99915, not on 1. The returned latents are therefore
    sqrt(alpha_bar_0) x0_hat + sqrt(1 - alpha_bar_0) eps_hat, exactly what the official loop returns. This is
    diffusers' rule too (previous timestep t - T // n, ``final_alpha_cumprod`` below 0), which also defines the
    two non-official options: ``final_alpha="one"`` and the trailing grid, where t - T // n can differ by one
    from the next grid entry (e.g. 966 -> 933, next entry 932), exactly as in diffusers.

    Args:
        diffusion: Supplies the schedule (and the offset noise for x_T).
        config: The settings; None uses the official defaults.
    """

    def __init__(self, diffusion: GaussianDiffusion, config: SamplerConfig | None = None) -> None:
        self.diffusion = diffusion
        self.config = config if config is not None else SamplerConfig()
        if self.config.num_steps > diffusion.num_train_timesteps:
            raise ValueError(
                f"sampler.num_steps must be <= diffusion.num_train_timesteps={diffusion.num_train_timesteps}, "
                f"got {self.config.num_steps}"
            )
        self.stride = diffusion.num_train_timesteps // self.config.num_steps
        grid = ddim_timesteps if self.config.timestep_spacing == "official" else trailing_timesteps
        self.timesteps = grid(diffusion.num_train_timesteps, self.config.num_steps)

    def sample(
        self,
        cond_fn: DenoiseFn,
        uncond_fn: DenoiseFn | None,
        shape: tuple[int, int, int, int, int] | torch.Size,
        generator: torch.Generator | None = None,
        progress: bool = False,
        *,
        noise: torch.Tensor | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Sample latents with separate conditional and unconditional calls.

        Args:
            cond_fn: ``(xt, t) -> v`` with all conditions.
            uncond_fn: ``(xt, t) -> v`` with the conditions dropped; not called (may be None) when
                guidance_scale == 1.
            shape: (b, c, f, h, w) of the latents.
            generator: Random generator for x_T (offset noise, as in training) and, when eta > 0, the step
                noise; None uses the global RNG.
            progress: Show a progress bar over the steps.
            noise: x_T to start from instead of drawing it, shape ``shape``.
            device: Where to sample; defaults to the generator's device (CPU without a generator).
            dtype: dtype of the latents during the loop (the official loop keeps float32).

        Returns:
            The final latents (model space, i.e. scaled by the VAE factor), shape (b, c, f, h, w). Runs under
            ``torch.no_grad()``.
        """
        scale = self.config.guidance_scale
        if scale != 1.0 and uncond_fn is None:
            raise ValueError(f"uncond_fn is required when sampler.guidance_scale != 1 (got {scale})")

        def guided(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            cond = cond_fn(xt, t)
            if scale == 1.0:
                return cond
            return self.guide(cond, uncond_fn(xt, t))

        return self._loop(guided, shape, generator, progress, noise, device, dtype)

    def sample_paired(
        self,
        cond_uncond_fn: PairedDenoiseFn,
        shape: tuple[int, int, int, int, int] | torch.Size,
        generator: torch.Generator | None = None,
        progress: bool = False,
        *,
        noise: torch.Tensor | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Like `sample`, with one function that returns both branches (e.g. one call on a doubled batch).

        Args:
            cond_uncond_fn: ``(xt, t) -> (v_cond, v_uncond)``.
            shape: (b, c, f, h, w) of the latents.
            generator: As in `sample`.
            progress: As in `sample`.
            noise: As in `sample`.
            device: As in `sample`.
            dtype: As in `sample`.

        Returns:
            The final latents, shape (b, c, f, h, w).
        """
        scale = self.config.guidance_scale

        def guided(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            cond, uncond = cond_uncond_fn(xt, t)
            return cond if scale == 1.0 else self.guide(cond, uncond)

        return self._loop(guided, shape, generator, progress, noise, device, dtype)

    def guide(self, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        """Classifier-free guidance u + s (c - u) (official form and order), then the optional rescale."""
        guided = uncond + self.config.guidance_scale * (cond - uncond)
        if self.config.guidance_rescale > 0.0:
            guided = rescale_guidance(guided, cond, self.config.guidance_rescale)
        return guided

    def step(
        self,
        xt: torch.Tensor,
        t: torch.Tensor,
        v: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One DDIM update x_t -> x_{t - stride} from the (guided) v prediction (official `ddim_sample`).

        Args:
            xt: Current latents, shape (b, c, f, h, w).
            t: Current timesteps, shape (b,), int64.
            v: Predicted v, same shape as ``xt``.
            generator: For the eta > 0 noise (plain N(0, I), no offset, as officially).

        Returns:
            x_{t - stride}, same shape and dtype as ``xt``.
        """
        diffusion = self.diffusion
        x0 = diffusion.predict_x0(xt, t, v)
        eps = diffusion.predict_eps(xt, t, v)
        t_prev = t - self.stride
        alpha = diffusion.coefficient("alphas_cumprod", t, xt)
        # Below 0: alpha_bar_0 (official; the same as indexing at max(t - stride, 0)) or 1.
        alpha_prev = diffusion.coefficient("alphas_cumprod", t_prev.clamp(min=0), xt)
        if self.config.final_alpha == "one":
            final = (t_prev < 0).view(alpha_prev.shape)
            alpha_prev = torch.where(final, torch.ones_like(alpha_prev), alpha_prev)
        x_prev = alpha_prev.sqrt() * x0
        if self.config.eta == 0.0:
            return x_prev + (1.0 - alpha_prev).sqrt() * eps
        sigma = self.config.eta * ((1 - alpha_prev) / (1 - alpha) * (1 - alpha / alpha_prev)).sqrt()
        step_noise = torch.randn(xt.shape, generator=generator, device=_draw_device(generator, xt), dtype=xt.dtype)
        # The official mask zeroes the noise at t == 0; the grid never reaches 0, but keep the rule.
        mask = (t != 0).to(xt.dtype).view(-1, *([1] * (xt.ndim - 1)))
        # (1 - a_prev - sigma^2) = (1 - a_prev)^2 a / (a_prev (1 - a)) >= 0 for eta <= 1; clamp the rounding.
        direction = (1.0 - alpha_prev - sigma**2).clamp(min=0.0).sqrt()
        return x_prev + direction * eps + mask * sigma * step_noise.to(xt.device)

    def _loop(
        self,
        guided_fn: DenoiseFn,
        shape: tuple[int, int, int, int, int] | torch.Size,
        generator: torch.Generator | None,
        progress: bool,
        noise: torch.Tensor | None,
        device: torch.device | str | None,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        if device is None:
            device = noise.device if noise is not None else (generator.device if generator is not None else "cpu")
        if noise is None:
            draw_device = generator.device if generator is not None else device
            noise = self.diffusion.sample_noise(shape, generator, device=draw_device, dtype=dtype)
        elif tuple(noise.shape) != tuple(shape):
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(shape)}")
        xt = noise.to(device=device, dtype=dtype)
        b = xt.shape[0]
        steps: Iterable[torch.Tensor] = self.timesteps
        if progress:
            # rich, not tqdm: the bar then shares the console that Lightning's progress bar and the CLI print to
            # (a tqdm bar writes carriage returns into it), and prints no control codes into a non-TTY log.
            from rich.progress import track

            steps = track(steps, description="DDIM", total=len(self.timesteps))
        with torch.no_grad():
            for step in steps:
                t = torch.full((b,), int(step), dtype=torch.int64, device=xt.device)
                v = guided_fn(xt, t)
                xt = self.step(xt, t, v.to(xt.dtype), generator)
        return xt


def _draw_device(generator: torch.Generator | None, like: torch.Tensor) -> torch.device:
    return generator.device if generator is not None else like.device
