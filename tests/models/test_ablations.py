"""The paper's IPI ablations (Tables 4-5) are configurations that build different modules."""

from __future__ import annotations

import pytest
import torch
from support.denoiser import randomize, tiny_inputs

from animatex_train.models.config import tiny_denoiser_config
from animatex_train.models.transformers import SpatialTransformer
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


def _pose_attention_input(model: AnimateXDenoiser) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(block input, the spatial attention's result ``x + delta(x)``, the pose attention's input) of the first
    spatial transformer in one forward of ``model``."""
    block = next(m for m in model.modules() if isinstance(m, SpatialTransformer))
    seen: dict[str, torch.Tensor] = {}
    spatial, pose = block.delta, block.pose_attention.delta

    def record_input(module, args) -> None:  # a pre-hook that returned a value would replace the arguments
        seen.setdefault("block", args[0].clone())

    block.register_forward_pre_hook(record_input)

    def spatial_delta(x, *args, **kwargs):
        out = spatial(x, *args, **kwargs)
        seen.setdefault("spatial", (x + out).clone())
        return out

    def pose_delta(x, tokens):
        seen.setdefault("pose", x.clone())
        return pose(x, tokens)

    block.delta, block.pose_attention.delta = spatial_delta, pose_delta  # instance attributes: this model only
    latents, t, cond = tiny_inputs(model.config)
    with torch.no_grad():
        model.eval()(latents, t, cond)
    return seen["block"], seen["spatial"], seen["pose"]


def test_parallel_placement_reads_the_block_input():
    """PA (paper Table 5): the pose attention reads the block's input beside the spatial attention; the
    default reads the spatial attention's result."""
    sequential, parallel = build(), build(placement="parallel")
    randomize(sequential)
    parallel.load_state_dict(sequential.state_dict())
    block_input, spatial_out, pose_input = _pose_attention_input(parallel)
    assert torch.equal(pose_input, block_input)
    block_input, spatial_out, pose_input = _pose_attention_input(sequential)
    assert torch.equal(pose_input, spatial_out) and not torch.allclose(pose_input, block_input)


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


def _extractor_inputs(model: AnimateXDenoiser, keypoints: torch.Tensor, driving_clip: torch.Tensor, b: int, f: int):
    """The queries and the key/value source the IPI's extractor gets, and the keypoint encoder's tokens."""
    seen: dict[str, torch.Tensor] = {}
    handles = [
        model.ipi.extractor.register_forward_pre_hook(lambda m, args: seen.update(queries=args[0], source=args[1])),
        model.ipi.keypoint_encoder.register_forward_hook(lambda m, args, out: seen.update(keypoint_tokens=out)),
    ]
    with torch.no_grad():
        model.ipi(keypoints, driving_clip, b, f)
    for handle in handles:
        handle.remove()
    return seen


def test_clip_query_uses_keypoints_as_keys():
    """KV_Q (paper Table 5): the keypoint tokens are the extractor's keys and values, and the queries do not see
    the keypoints; the default is the other way round (one pooled CLIP token per frame as keys and values)."""
    model = build(query="clip").eval()
    randomize(model)
    latents, t, cond = tiny_inputs(model.config)
    b, f = latents.shape[0], latents.shape[2] + 1
    base = _extractor_inputs(model, cond.pose_keypoints, cond.driving_clip, b, f)
    moved = _extractor_inputs(model, cond.pose_keypoints + 0.2, cond.driving_clip, b, f)
    assert torch.equal(base["source"], base["keypoint_tokens"]) and base["source"].shape[1] > 1
    assert torch.equal(base["queries"], moved["queries"]) and not torch.allclose(base["source"], moved["source"])
    default = build().eval()
    randomize(default)
    base = _extractor_inputs(default, cond.pose_keypoints, cond.driving_clip, b, f)
    moved = _extractor_inputs(default, cond.pose_keypoints + 0.2, cond.driving_clip, b, f)
    assert base["source"].shape[1] == 1 and torch.equal(base["source"], moved["source"])
    assert not torch.allclose(base["queries"], moved["queries"])
