"""Noise schedule numbers against the official release (docs/official_release.md §4) and the closed form; DDIM grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from animatex_train.diffusion.gaussian import DiffusionConfig, GaussianDiffusion
from animatex_train.diffusion.schedule import (
    ddim_timesteps,
    sample_uniform_timesteps,
    sd_linear_betas,
    zero_terminal_snr_betas,
)


@pytest.fixture(scope="module")
def diffusion() -> GaussianDiffusion:
    return GaussianDiffusion()


def test_zero_terminal_snr_values_from_spec(diffusion: GaussianDiffusion) -> None:
    alpha_bar = diffusion.alphas_cumprod
    assert alpha_bar.dtype == torch.float64
    assert alpha_bar.shape == (1000,)
    assert alpha_bar[-1].item() == 0.0
    assert diffusion.betas[-1].item() == 1.0
    assert round(alpha_bar[0].item(), 5) == 0.99915
    assert alpha_bar[500].item() == pytest.approx(0.241, abs=5e-4)
    assert alpha_bar[990].item() == pytest.approx(1.65e-5, rel=1e-2)
    assert bool((alpha_bar[1:] < alpha_bar[:-1]).all()), "alpha_bar must decrease strictly"


def test_rescale_matches_closed_form() -> None:
    # Lin et al. 2024: sqrt(alpha_bar) is shifted to end at 0 and scaled to keep its first value.
    betas = (np.linspace(np.sqrt(0.00085), np.sqrt(0.012), 1000, dtype=np.float64)) ** 2
    root = np.sqrt(np.cumprod(1.0 - betas))
    expected = ((root - root[-1]) * root[0] / (root[0] - root[-1])) ** 2
    got = GaussianDiffusion().alphas_cumprod.numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-15)
    # The plain schedule is untouched when the rescale is off.
    plain = GaussianDiffusion(DiffusionConfig(zero_terminal_snr=False)).alphas_cumprod.numpy()
    np.testing.assert_allclose(plain, np.cumprod(1.0 - betas), rtol=1e-14)
    assert plain[-1] == pytest.approx(0.00466, abs=1e-5)


def test_rescale_leaves_a_zero_snr_schedule_alone() -> None:
    rescaled = zero_terminal_snr_betas(sd_linear_betas(1000, 0.00085, 0.012))
    assert torch.equal(zero_terminal_snr_betas(rescaled), rescaled)


def test_official_ddim_grid_for_30_steps() -> None:
    steps = ddim_timesteps(1000, 30)
    assert steps.dtype == torch.int64
    assert steps.tolist() == [991 - 33 * k for k in range(31)]
    assert steps[0].item() == 991 and steps[-1].item() == 1 and 999 not in steps.tolist()


@pytest.mark.parametrize(
    ("num_steps", "expected"),
    [
        (7, [995 - 142 * k for k in range(8)]),  # arange overshoots: 8 entries for 7 steps
        (50, [981 - 20 * k for k in range(50)]),
        (1000, [999] + list(range(999, 0, -1))),  # 1 + arange reaches 1000, clamped to 999 (kept as official)
    ],
)
def test_ddim_grid_follows_official_formula(num_steps: int, expected: list[int]) -> None:
    assert ddim_timesteps(1000, num_steps).tolist() == expected


@pytest.mark.parametrize("num_steps", [0, 1001])
def test_ddim_grid_rejects_bad_step_counts(num_steps: int) -> None:
    with pytest.raises(ValueError, match="sampler.num_steps"):
        ddim_timesteps(1000, num_steps)


def test_uniform_timesteps_cover_range_and_follow_generator() -> None:
    t = sample_uniform_timesteps(20000, 1000, torch.Generator().manual_seed(3))
    assert t.dtype == torch.int64 and t.shape == (20000,)
    assert t.min().item() == 0 and t.max().item() == 999
    again = sample_uniform_timesteps(20000, 1000, torch.Generator().manual_seed(3))
    assert torch.equal(t, again)
    # Roughly uniform: each decile holds about 10 %.
    counts = torch.bincount(t // 100, minlength=10).float() / t.numel()
    assert torch.allclose(counts, torch.full((10,), 0.1), atol=0.01)
