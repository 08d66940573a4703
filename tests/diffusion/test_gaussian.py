"""GaussianDiffusion: config checks, forward process, v target identities, offset noise and the loss."""

from __future__ import annotations

import pytest
import torch

from animatex_train.diffusion.gaussian import DiffusionConfig, GaussianDiffusion

SHAPE = (2, 4, 3, 8, 6)


@pytest.fixture(scope="module")
def diffusion() -> GaussianDiffusion:
    return GaussianDiffusion()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prediction": "eps"}, "diffusion.prediction"),
        ({"loss": "l1"}, "diffusion.loss"),
        ({"beta_start": 0.02, "beta_end": 0.01}, "diffusion.beta_start"),
        ({"offset_noise_strength": -0.1}, "diffusion.offset_noise_strength"),
        ({"num_train_timesteps": 1}, "diffusion.num_train_timesteps"),
    ],
)
def test_config_errors_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        DiffusionConfig(**kwargs)


def test_add_noise_closed_form(diffusion: GaussianDiffusion) -> None:
    x0 = torch.randn(SHAPE, dtype=torch.float64)
    noise = torch.randn(SHAPE, dtype=torch.float64)
    t = torch.tensor([0, 500])
    xt = diffusion.add_noise(x0, noise, t)
    for i, step in enumerate(t.tolist()):
        a = diffusion.alphas_cumprod[step]
        torch.testing.assert_close(xt[i], a.sqrt() * x0[i] + (1 - a).sqrt() * noise[i])


@pytest.mark.parametrize("step", [0, 1, 500, 991, 999])
def test_v_parameterisation_round_trips(diffusion: GaussianDiffusion, step: int) -> None:
    x0 = torch.randn(SHAPE, dtype=torch.float64)
    noise = torch.randn(SHAPE, dtype=torch.float64)
    t = torch.full((SHAPE[0],), step)
    xt = diffusion.add_noise(x0, noise, t)
    v = diffusion.velocity_target(x0, noise, t)
    torch.testing.assert_close(diffusion.predict_x0(xt, t, v), x0)
    torch.testing.assert_close(diffusion.predict_eps(xt, t, v), noise)
    if step == 999:  # zero terminal SNR: xt is pure noise and v = -x0
        torch.testing.assert_close(xt, noise)
        torch.testing.assert_close(v, -x0)


def test_perfect_v_predictor_has_zero_loss(diffusion: GaussianDiffusion) -> None:
    x0 = torch.randn(SHAPE, dtype=torch.float64)

    def oracle(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # The v that maps this xt back to the known x0: x0 = sqrt(a) xt - sqrt(1 - a) v.
        a = diffusion.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
        return (a.sqrt() * xt - x0) / (1 - a).sqrt()

    loss, info = diffusion.training_loss(oracle, x0, torch.Generator().manual_seed(0))
    assert loss.shape == (SHAPE[0],) and loss.dtype == torch.float32
    assert info.t.shape == (SHAPE[0],) and info.t.dtype == torch.int64
    assert loss.max().item() < 1e-10
    bad, _ = diffusion.training_loss(lambda xt, t: torch.zeros_like(xt), x0, torch.Generator().manual_seed(0))
    assert bad.min().item() > 0.1


def test_loss_is_per_sample_mean_of_squared_error(diffusion: GaussianDiffusion) -> None:
    x0 = torch.randn(SHAPE)
    noise = torch.randn(SHAPE)
    t = torch.tensor([10, 700])
    shift = torch.tensor([0.5, -2.0]).view(-1, 1, 1, 1, 1)

    def off_by_shift(xt: torch.Tensor, t_in: torch.Tensor) -> torch.Tensor:
        return diffusion.velocity_target(x0, noise, t_in) + shift

    loss, info = diffusion.training_loss(off_by_shift, x0, t=t, noise=noise)
    torch.testing.assert_close(loss, torch.tensor([0.25, 4.0]))
    assert torch.equal(info.t, t)


def test_loss_draws_t_then_offset_noise_from_generator(diffusion: GaussianDiffusion) -> None:
    x0 = torch.randn(SHAPE)
    seen = {}

    def record(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen["xt"], seen["t"] = xt, t
        return torch.zeros_like(xt)

    loss_a, info = diffusion.training_loss(record, x0, torch.Generator().manual_seed(7))
    ref = torch.Generator().manual_seed(7)
    t = torch.randint(0, 1000, (SHAPE[0],), generator=ref)
    noise = torch.randn(SHAPE, generator=ref) + 0.1 * torch.randn(SHAPE[:3] + (1, 1), generator=ref)
    assert torch.equal(info.t, t)
    torch.testing.assert_close(seen["xt"], diffusion.add_noise(x0, noise, t))
    loss_b, _ = diffusion.training_loss(record, x0, torch.Generator().manual_seed(7))
    assert torch.equal(loss_a, loss_b)
    loss_c, _ = diffusion.training_loss(record, x0, torch.Generator().manual_seed(8))
    assert not torch.equal(loss_a, loss_c)


def test_loss_is_float32_for_half_precision_predictions(diffusion: GaussianDiffusion) -> None:
    x0 = torch.randn(SHAPE)
    loss, _ = diffusion.training_loss(lambda xt, t: xt.to(torch.bfloat16), x0, torch.Generator().manual_seed(0))
    assert loss.dtype == torch.float32


def test_offset_noise_structure() -> None:
    strength = 0.1
    diffusion = GaussianDiffusion(DiffusionConfig(offset_noise_strength=strength))
    shape = (2, 4, 3, 64, 64)
    noise = diffusion.sample_noise(shape, torch.Generator().manual_seed(1))
    ref = torch.Generator().manual_seed(1)
    white = torch.randn(shape, generator=ref)
    offset = torch.randn((2, 4, 3, 1, 1), generator=ref)
    torch.testing.assert_close(noise, white + strength * offset)
    # The residual after removing the white part is constant over (h, w) for each (b, c, f) ...
    residual = noise - white
    assert torch.allclose(residual, residual[..., :1, :1].expand_as(residual), atol=1e-6)
    # ... and its spread is the strength.
    big = diffusion.sample_noise((64, 4, 8, 32, 32), torch.Generator().manual_seed(2))
    spatial_mean = big.mean(dim=(-1, -2))  # strength * offset + white mean, variance strength^2 + 1 / 1024
    assert spatial_mean.var().item() == pytest.approx(strength**2 + 1 / 1024, rel=0.15)
    plain = GaussianDiffusion(DiffusionConfig(offset_noise_strength=0.0)).sample_noise(
        shape, torch.Generator().manual_seed(1)
    )
    assert torch.equal(plain, torch.randn(shape, generator=torch.Generator().manual_seed(1)))


def test_noise_shape_must_be_five_dimensional(diffusion: GaussianDiffusion) -> None:
    with pytest.raises(ValueError, match="b, c, f, h, w"):
        diffusion.sample_noise((2, 4, 8, 8))
