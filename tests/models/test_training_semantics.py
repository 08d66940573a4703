"""The defaults train the paper's model (issue 14, points 1 and 2).

1. Each sample's motion tokens come from its own keypoints: a micro-batch of 2 computes what two micro-batches
   of 1 compute. The official row order does not (it pairs sample i with sample j's keypoints).
2. The all-dropped group of the condition dropout is the unconditional branch that classifier-free guidance
   samples with: an all-dropped sample's output is, bit for bit, the output for ``DenoiserConditions()``.
"""

from __future__ import annotations

import pytest
import torch
from support.denoiser import randomize, tiny_inputs

from animatex_train.models.config import ConditionDropoutConfig, DenoiserConfig, tiny_denoiser_config
from animatex_train.models.official import RELEASED_UNET_KWARGS, config_from_official
from animatex_train.models.unet import AnimateXDenoiser, DenoiserConditions


def _rows(cond: DenoiserConditions, index: slice) -> DenoiserConditions:
    return DenoiserConditions(**{k: None if v is None else v[index] for k, v in vars(cond).items()})


def _micro_batches_of_one_vs_one_of_two(config: DenoiserConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs for a batch of 2 samples, and for each sample alone; float64, so that the only difference
    between the two is the pairing of inputs (the kernels' batch-size-dependent rounding is ~1e-15)."""
    model = AnimateXDenoiser(config).eval().double()  # eval: no dropout, no condition dropout
    randomize(model)  # the keypoint token MLP and the pose attention are zero-initialised: make them matter
    latents, t, cond = tiny_inputs(config, b=2)
    latents = latents.double()
    cond = DenoiserConditions(**{k: v.double() for k, v in vars(cond).items() if v is not None})
    with torch.no_grad():
        together = model(latents, t, cond)
        alone = torch.cat([model(latents[i : i + 1], t[i : i + 1], _rows(cond, slice(i, i + 1))) for i in range(2)])
    return together, alone


def test_default_micro_batch_of_two_equals_two_micro_batches_of_one():
    together, alone = _micro_batches_of_one_vs_one_of_two(tiny_denoiser_config())  # the defaults
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-12)


def test_official_row_order_gives_a_sample_another_samples_keypoints():
    config = tiny_denoiser_config()
    config.ipi.keypoint_row_order = "official"
    together, alone = _micro_batches_of_one_vs_one_of_two(config)
    assert (together - alone).abs().amax(dim=(1, 2, 3, 4)).min() > 1e-4  # both samples are affected


def test_paper_defaults_and_official_parity_config():
    paper = DenoiserConfig()
    assert paper.ipi.keypoint_row_order == "per_sample"
    assert paper.condition_dropout.all_dropped_loses_reference and paper.condition_dropout.all_dropped_loses_ipi
    official = config_from_official(RELEASED_UNET_KWARGS)  # parity: the official code's behaviour, unchanged
    assert official.ipi.keypoint_row_order == "official"
    assert not official.condition_dropout.all_dropped_loses_reference
    assert not official.condition_dropout.all_dropped_loses_ipi


def _all_dropped_vs_unconditional(**dropout_overrides) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A training forward (condition dropout on, every other kind of dropout off) of a batch of 4 in which some but
    not all samples are drawn into the all-dropped group, and the forward for ``DenoiserConditions()`` of the same
    latents and timesteps. Returns ``(conditioned, unconditional, all_dropped)``.

    The batch shape is the same in both calls so that the comparison can be bitwise: CPU kernels round differently
    for different batch sizes (the row independence itself is the micro-batch test above).
    """
    dropout = ConditionDropoutConfig(p_all_zero=0.5, p_all_keep=0.0, **dropout_overrides)
    config = tiny_denoiser_config(condition_dropout=dropout)
    config.dropout = config.temporal_conv_dropout = config.adapter_dropout = config.ipi.keypoint_dropout = 0.0
    model = AnimateXDenoiser(config).train()
    randomize(model, seed=1)
    b = 4
    latents, t, cond = tiny_inputs(config, b=b)
    # As training feeds it (conditioning.batch_conditions): every branch present, the reference slot filled for all,
    # so any condition the all-dropped group failed to lose would show in its output.
    cond.local_image_keep, cond.ref_latent_keep = torch.ones(b), torch.ones(b)

    def all_dropped_by(seed: int) -> torch.Tensor:
        return model.condition_dropout(b, latents.device, torch.Generator().manual_seed(seed)).all_dropped

    seed = next(s for s in range(1000) if 0 < int(all_dropped_by(s).sum()) < b)  # the first mixed batch
    all_dropped = all_dropped_by(seed)
    with torch.no_grad():
        conditioned = model(latents, t, cond, dropout_generator=torch.Generator().manual_seed(seed))
        unconditional = model(latents, t, DenoiserConditions(), dropout_generator=torch.Generator().manual_seed(seed))
    return conditioned, unconditional, all_dropped


def test_all_dropped_sample_is_exactly_the_unconditional_branch():
    conditioned, unconditional, all_dropped = _all_dropped_vs_unconditional()
    assert torch.equal(conditioned[all_dropped], unconditional[all_dropped])
    for i in torch.where(~all_dropped)[0]:  # the others are conditioned (a real difference to detect)
        assert (conditioned[i] - unconditional[i]).abs().max() > 1e-3


@pytest.mark.parametrize("switch", ["all_dropped_loses_reference", "all_dropped_loses_ipi"])
def test_official_all_dropped_group_is_not_the_unconditional_branch(switch):
    conditioned, unconditional, all_dropped = _all_dropped_vs_unconditional(**{switch: False})
    assert (conditioned[all_dropped] - unconditional[all_dropped]).abs().max() > 1e-3
