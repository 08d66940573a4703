"""The paper's IPI ablations (Tables 4-5) are configurations that build different modules."""

from __future__ import annotations

import pytest
import torch
from support.denoiser import randomize, tiny_inputs

from animatex_train.models.config import tiny_denoiser_config
from animatex_train.models.unet import AnimateXDenoiser


def build(**ipi) -> AnimateXDenoiser:
    config = tiny_denoiser_config()
    for key, value in ipi.items():
        setattr(config.ipi, key, value)
    return AnimateXDenoiser(config)


def test_without_ipi_has_no_pose_modules():
    model = build(enabled=False)
    assert model.ipi is None
    assert not any("pose_attention" in k for k in model.state_dict())


def test_without_learnable_query_has_no_latents():
    model = build(query="keypoints")
    assert model.ipi.extractor.latents is None and model.ipi.keypoint_encoder is not None


def test_without_keypoint_query_has_no_keypoint_encoder():
    model = build(query="learned")
    assert model.ipi.keypoint_encoder is None and model.ipi.extractor.latents is not None


def test_parallel_placement_reads_the_block_input():
    sequential, parallel = build(), build(placement="parallel")
    parallel.load_state_dict(sequential.state_dict())
    randomize(sequential)
    parallel.load_state_dict(sequential.state_dict())
    latents, t, cond = tiny_inputs(sequential.config)
    with torch.no_grad():
        assert not torch.allclose(sequential.eval()(latents, t, cond), parallel.eval()(latents, t, cond))


@pytest.mark.parametrize("query", ["learned+keypoints", "keypoints", "learned", "clip"])
@pytest.mark.parametrize("placement", ["sequential", "parallel"])
def test_every_variant_trains(query, placement):
    model = build(query=query, placement=placement).train()
    randomize(model)
    latents, t, cond = tiny_inputs(model.config)
    out = model(latents, t, cond, dropout_generator=torch.Generator().manual_seed(0))
    out.square().mean().backward()
    assert out.shape == latents.shape and torch.isfinite(out).all()
    assert model.ipi.extractor.proj_in.weight.grad.abs().sum() > 0


def test_clip_query_uses_keypoints_as_keys():
    model = build(query="clip").eval()
    randomize(model)
    latents, t, cond = tiny_inputs(model.config)
    b, f = latents.shape[0], latents.shape[2] + 1
    with torch.no_grad():
        base = model.ipi(cond.pose_keypoints, cond.driving_clip, b, f)
        moved = model.ipi(cond.pose_keypoints + 0.2, cond.driving_clip, b, f)
    assert not torch.allclose(base, moved)
