"""DDIM sampler: official grid and last-step rule, exact-predictor recovery, CFG, determinism, diffusers parity."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from animatex_train.diffusion.gaussian import GaussianDiffusion
from animatex_train.diffusion.sampling import DDIMSampler, SamplerConfig

SHAPE = (2, 4, 3, 8, 6)


@pytest.fixture(scope="module")
def diffusion() -> GaussianDiffusion:
    return GaussianDiffusion()


def _oracle(diffusion: GaussianDiffusion, x0: torch.Tensor):
    """The v that maps any xt exactly back to the known x0 (the exact x0 predictor)."""

    def fn(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = diffusion.alphas_cumprod[t].view(-1, 1, 1, 1, 1).to(xt.dtype)
        return (a.sqrt() * xt - x0) / (1 - a).sqrt()

    return fn


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="sampler.num_steps"):
        SamplerConfig(num_steps=0)
    with pytest.raises(ValueError, match="sampler.eta"):
        SamplerConfig(eta=-1.0)
    with pytest.raises(ValueError, match=r"sampler.eta must be in \[0, 1\]"):
        SamplerConfig(eta=1.5)  # used to give NaN
    with pytest.raises(ValueError, match="sampler.timestep_spacing"):
        SamplerConfig(timestep_spacing="leading")
    with pytest.raises(ValueError, match="sampler.final_alpha"):
        SamplerConfig(final_alpha="zero")
    with pytest.raises(ValueError, match="sampler.guidance_rescale"):
        SamplerConfig(guidance_rescale=1.5)
    with pytest.raises(ValueError, match="sampler.guidance_scale"):
        SamplerConfig(guidance_scale=-1.0)
    with pytest.raises(ValueError, match="sampler.num_steps"):
        DDIMSampler(GaussianDiffusion(), SamplerConfig(num_steps=2000))


def test_evaluates_the_official_timesteps_in_order(diffusion: GaussianDiffusion) -> None:
    sampler = DDIMSampler(diffusion)
    seen: list[int] = []

    def record(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.dtype == torch.int64 and t.shape == (SHAPE[0],)
        seen.append(int(t[0]))
        return torch.zeros_like(xt)

    sampler.sample(record, record, SHAPE, torch.Generator().manual_seed(0))
    expected = [991 - 33 * k for k in range(31)]
    assert sampler.timesteps.tolist() == expected
    assert seen == [t for t in expected for _ in range(2)]  # cond and uncond per step


def test_exact_predictor_recovers_x0_with_official_last_step(diffusion: GaussianDiffusion) -> None:
    x0 = torch.randn(SHAPE, dtype=torch.float64)
    x_start = torch.randn(SHAPE, dtype=torch.float64)
    sampler = DDIMSampler(diffusion, SamplerConfig(guidance_scale=1.0))
    out = sampler.sample(_oracle(diffusion, x0), None, SHAPE, noise=x_start, dtype=torch.float64)
    # With an exact predictor, eps stays the one implied by x_T at t = 991, and the official alpha_prev rule
    # makes the last step (t = 1) land on alpha_bar_0, not on 1.
    a_start, a0 = diffusion.alphas_cumprod[991], diffusion.alphas_cumprod[0]
    eps = (x_start - a_start.sqrt() * x0) / (1 - a_start).sqrt()
    torch.testing.assert_close(out, a0.sqrt() * x0 + (1 - a0).sqrt() * eps)
    assert (out - x0).abs().max().item() < 0.03 * eps.abs().max().item() + 1e-3
    assert (out - x0).abs().max().item() < 0.2 < (x_start - x0).abs().max().item()


@pytest.mark.parametrize("step", [991, 958, 34, 1])
def test_step_matches_diffusers_ddim_step(diffusion: GaussianDiffusion, step: int) -> None:
    # diffusers with prev = t - T // n and final alpha = alpha_bar_0 (set_alpha_to_one=False) is the same update.
    scheduler = DDIMScheduler(
        trained_betas=diffusion.betas.numpy(),
        prediction_type="v_prediction",
        set_alpha_to_one=False,
        clip_sample=False,
    )
    scheduler.set_timesteps(30)
    sampler = DDIMSampler(diffusion)
    xt, v = torch.randn(SHAPE), torch.randn(SHAPE)
    ours = sampler.step(xt, torch.full((SHAPE[0],), step), v)
    theirs = scheduler.step(v, step, xt, eta=0.0).prev_sample
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_guidance_scale_one_skips_uncond_and_equals_conditional(diffusion: GaussianDiffusion) -> None:
    def cond(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.5 * xt + 0.01 * t.view(-1, 1, 1, 1, 1)

    def never(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise AssertionError("uncond_fn must not be called when guidance_scale == 1")

    unguided = DDIMSampler(diffusion, SamplerConfig(guidance_scale=1.0))
    out = unguided.sample(cond, never, SHAPE, torch.Generator().manual_seed(0))
    # With identical branches, u + s (c - u) == c exactly, so any scale gives the conditional result.
    guided = DDIMSampler(diffusion, SamplerConfig(guidance_scale=2.5))
    assert torch.equal(out, guided.sample(cond, cond, SHAPE, torch.Generator().manual_seed(0)))
    paired = unguided.sample_paired(lambda xt, t: (cond(xt, t), None), SHAPE, torch.Generator().manual_seed(0))
    assert torch.equal(out, paired)


def test_cfg_combines_v_outputs(diffusion: GaussianDiffusion) -> None:
    scale = 2.5

    def cond(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.3 * xt + 1.0

    def uncond(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -0.2 * xt

    def combined(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return uncond(xt, t) + scale * (cond(xt, t) - uncond(xt, t))

    config = SamplerConfig(num_steps=5, guidance_scale=scale)
    out = DDIMSampler(diffusion, config).sample(cond, uncond, SHAPE, torch.Generator().manual_seed(0))
    paired = DDIMSampler(diffusion, config).sample_paired(
        lambda xt, t: (cond(xt, t), uncond(xt, t)), SHAPE, torch.Generator().manual_seed(0)
    )
    reference = DDIMSampler(diffusion, SamplerConfig(num_steps=5, guidance_scale=1.0)).sample(
        combined, None, SHAPE, torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(out, reference)
    assert torch.equal(out, paired)
    conditional_only = DDIMSampler(diffusion, SamplerConfig(num_steps=5, guidance_scale=1.0)).sample(
        cond, None, SHAPE, torch.Generator().manual_seed(0)
    )
    assert not torch.allclose(out, conditional_only)


def test_missing_uncond_is_an_error_when_guiding(diffusion: GaussianDiffusion) -> None:
    with pytest.raises(ValueError, match="uncond_fn"):
        DDIMSampler(diffusion).sample(lambda xt, t: xt, None, SHAPE)


def test_initial_noise_is_offset_noise_from_generator(diffusion: GaussianDiffusion) -> None:
    first: list[torch.Tensor] = []

    def record(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not first:
            first.append(xt.clone())
        return torch.zeros_like(xt)

    DDIMSampler(diffusion, SamplerConfig(guidance_scale=1.0)).sample(
        record, None, SHAPE, torch.Generator().manual_seed(5)
    )
    expected = diffusion.sample_noise(SHAPE, torch.Generator().manual_seed(5))
    assert torch.equal(first[0], expected)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_sampling_is_deterministic_given_a_generator(diffusion: GaussianDiffusion, eta: float) -> None:
    sampler = DDIMSampler(diffusion, SamplerConfig(num_steps=4, eta=eta))

    def fn(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.1 * xt

    a = sampler.sample(fn, fn, SHAPE, torch.Generator().manual_seed(11))
    b = sampler.sample(fn, fn, SHAPE, torch.Generator().manual_seed(11))
    c = sampler.sample(fn, fn, SHAPE, torch.Generator().manual_seed(12))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.isfinite(a).all()


def test_eta_changes_the_result_only_through_step_noise(diffusion: GaussianDiffusion) -> None:
    x0 = torch.randn(SHAPE)
    noise = torch.randn(SHAPE)
    deterministic = DDIMSampler(diffusion, SamplerConfig(num_steps=4, guidance_scale=1.0))
    stochastic = DDIMSampler(diffusion, SamplerConfig(num_steps=4, guidance_scale=1.0, eta=1.0))
    out_0 = deterministic.sample(_oracle(diffusion, x0), None, SHAPE, noise=noise)
    out_1 = stochastic.sample(_oracle(diffusion, x0), None, SHAPE, torch.Generator().manual_seed(0), noise=noise)
    assert not torch.allclose(out_0, out_1)
    # Both end near x0: the exact predictor pins x0, eta only changes the injected noise.
    assert (out_1 - x0).abs().max().item() < 0.3


def test_progress_bar_counts_every_step_and_changes_nothing(
    diffusion: GaussianDiffusion, capsys: pytest.CaptureFixture[str]
) -> None:
    sampler = DDIMSampler(diffusion, SamplerConfig(num_steps=2, guidance_scale=1.0))
    quiet = sampler.sample(lambda xt, t: xt, None, SHAPE, torch.Generator().manual_seed(0))
    capsys.readouterr()
    shown = sampler.sample(lambda xt, t: xt, None, SHAPE, torch.Generator().manual_seed(0), progress=True)
    assert torch.equal(shown, quiet)
    out = capsys.readouterr().out  # rich's console: one final line in a non-TTY, no control codes
    assert [line.split()[0] for line in out.splitlines()] == ["DDIM"] and "100%" in out and "\x1b" not in out, out


def _diffusers_scheduler(diffusion: GaussianDiffusion, spacing: str, alpha_to_one: bool) -> DDIMScheduler:
    return DDIMScheduler(
        trained_betas=diffusion.betas.numpy(),
        prediction_type="v_prediction",
        set_alpha_to_one=alpha_to_one,
        clip_sample=False,
        timestep_spacing=spacing,
    )


@pytest.mark.parametrize("num_steps", [1, 7, 30, 50, 333])
def test_trailing_grid_equals_diffusers(diffusion: GaussianDiffusion, num_steps: int) -> None:
    scheduler = _diffusers_scheduler(diffusion, "trailing", False)
    scheduler.set_timesteps(num_steps)
    sampler = DDIMSampler(diffusion, SamplerConfig(num_steps=num_steps, timestep_spacing="trailing"))
    assert sampler.timesteps.tolist() == scheduler.timesteps.tolist()
    assert sampler.timesteps[0].item() == 999


def _field(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A smooth, t-dependent stand-in for the network's v (the same function for us and for diffusers)."""
    return 0.4 * torch.tanh(xt) + 1e-3 * t.view(-1, 1, 1, 1, 1).to(xt.dtype)


@pytest.mark.parametrize(
    ("spacing", "final_alpha", "eta"),
    [
        ("official", "alpha_0", 0.0),
        ("official", "one", 0.0),
        ("trailing", "alpha_0", 0.0),
        ("trailing", "one", 0.0),
        ("trailing", "alpha_0", 1.0),
        ("official", "one", 0.5),
    ],
)
def test_whole_loop_matches_diffusers(diffusion: GaussianDiffusion, spacing: str, final_alpha: str, eta: float) -> None:
    """Our loop against diffusers' DDIMScheduler.step run over the same grid with the same v function."""
    num_steps = 10
    config = SamplerConfig(
        num_steps=num_steps, guidance_scale=1.0, timestep_spacing=spacing, final_alpha=final_alpha, eta=eta
    )
    sampler = DDIMSampler(diffusion, config)
    scheduler = _diffusers_scheduler(
        diffusion, "trailing" if spacing == "trailing" else "leading", final_alpha == "one"
    )
    scheduler.set_timesteps(num_steps)  # sets T // n; the official grid itself is not a diffusers spacing
    x_start = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    ours = sampler.sample(_field, None, SHAPE, torch.Generator().manual_seed(9), noise=x_start)
    x, generator = x_start.clone(), torch.Generator().manual_seed(9)
    for step in sampler.timesteps.tolist():
        t = torch.full((SHAPE[0],), step)
        noise = torch.randn(SHAPE, generator=generator) if eta > 0 else None  # our draw order: one per step
        x = scheduler.step(_field(x, t), step, x, eta=eta, variance_noise=noise).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)
    assert torch.isfinite(ours).all()


def test_final_alpha_one_returns_the_x0_prediction(diffusion: GaussianDiffusion) -> None:
    x0 = torch.randn(SHAPE, dtype=torch.float64)
    config = SamplerConfig(guidance_scale=1.0, final_alpha="one")
    out = DDIMSampler(diffusion, config).sample(
        _oracle(diffusion, x0), None, SHAPE, noise=torch.randn(SHAPE, dtype=torch.float64), dtype=torch.float64
    )
    torch.testing.assert_close(out, x0)  # no sqrt(1 - alpha_bar_0) eps term left, unlike the official last step


def test_guidance_rescale_matches_diffusers(diffusion: GaussianDiffusion) -> None:
    from diffusers.guiders.guider_utils import rescale_noise_cfg  # what its CFG guiders and SD pipelines apply

    sampler = DDIMSampler(diffusion, SamplerConfig(guidance_scale=4.0, guidance_rescale=0.7))
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(SHAPE, generator=g), 3 * torch.randn(SHAPE, generator=g)
    guided = uncond + 4.0 * (cond - uncond)
    torch.testing.assert_close(sampler.guide(cond, uncond), rescale_noise_cfg(guided, cond, guidance_rescale=0.7))
    plain = DDIMSampler(diffusion, SamplerConfig(guidance_scale=4.0))
    assert torch.equal(plain.guide(cond, uncond), guided)  # 0 = the official guidance, bit for bit
    seen = []

    def cond_fn(xt, t):
        return 0.5 * xt

    def uncond_fn(xt, t):
        seen.append(1)
        return -xt

    a = sampler.sample(cond_fn, uncond_fn, SHAPE, torch.Generator().manual_seed(1))
    b = plain.sample(cond_fn, uncond_fn, SHAPE, torch.Generator().manual_seed(1))
    assert seen and not torch.allclose(a, b)


def test_eta_one_stays_finite_over_the_whole_grid(diffusion: GaussianDiffusion) -> None:
    for spacing in ("official", "trailing"):
        sampler = DDIMSampler(diffusion, SamplerConfig(eta=1.0, timestep_spacing=spacing))
        out = sampler.sample(_field, _field, SHAPE, torch.Generator().manual_seed(0))
        assert torch.isfinite(out).all()
