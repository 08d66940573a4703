"""The denoiser at tiny width: shapes, zero-initialisation, UniAnimate compatibility, errors."""

from __future__ import annotations

import pytest
import torch
from support.denoiser import F, randomize, tiny_inputs  # noqa: E402

from animatex_train.models.blocks import ResBlock
from animatex_train.models.config import DenoiserConfig, ImplicitPoseIndicatorConfig, tiny_denoiser_config
from animatex_train.models.official import load_official_state_dict, to_official_state_dict
from animatex_train.models.transformers import SpatialTransformer, TemporalTransformer
from animatex_train.models.unet import AnimateXDenoiser, DenoiserConditions


def test_tiny_forward_backward_reaches_every_parameter():
    """(Its speed is benchmarks/gpu/step_bench.py --tiny's business: no wall-clock budget on a shared CI machine.)"""
    config = tiny_denoiser_config()
    model = AnimateXDenoiser(config).train()
    latents, t, cond = tiny_inputs(config)
    out = model(latents, t, cond)
    out.square().mean().backward()
    assert out.shape == latents.shape
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_zero_initialised_layers_are_zero():
    model = AnimateXDenoiser(tiny_denoiser_config())
    zero = []
    for module in model.modules():
        if isinstance(module, SpatialTransformer):
            zero += [
                module.proj_out.weight,
                module.proj_out.bias,
                module.pose_attention.proj_out.weight,
                module.pose_attention.proj_out.bias,
            ]
        if isinstance(module, TemporalTransformer):
            zero += [module.proj_out.weight, module.proj_out.bias]
        if isinstance(module, ResBlock):
            zero += [
                module.out_layers[-1].weight,
                module.out_layers[-1].bias,
                module.temporal_conv.conv4[-1].weight,
                module.temporal_conv.conv4[-1].bias,
            ]
    zero += [
        model.out[-1].weight,
        model.ipi.keypoint_encoder.token_mlp[-1].weight,
        model.ipi.keypoint_encoder.token_mlp[-1].bias,
    ]
    assert len(zero) > 20
    assert all(torch.count_nonzero(p) == 0 for p in zero)
    # and at init the whole network predicts only the output-head bias
    latents, t, cond = tiny_inputs(model.config)
    with torch.no_grad():
        out = model.eval()(latents, t, cond)
    assert torch.allclose(out, model.out[-1].bias.view(1, -1, 1, 1, 1).expand_as(out))


def test_unianimate_checkpoint_reproduces_unianimate_at_step_zero():
    with_ipi = tiny_denoiser_config()
    without_ipi = tiny_denoiser_config(ipi=ImplicitPoseIndicatorConfig(**{**vars(with_ipi.ipi), "enabled": False}))
    unianimate = AnimateXDenoiser(without_ipi).eval()
    randomize(unianimate)
    animatex = AnimateXDenoiser(with_ipi).eval()
    missing, unexpected = load_official_state_dict(animatex, to_official_state_dict(unianimate), strict=True)
    assert unexpected == []
    assert missing and all(
        k.startswith(
            ("pose_embedding_before.", "pose_embedding_after.", "input_blocks", "middle_block", "output_blocks")
        )
        for k in missing
    )
    assert all("pose_attention" in k or k.startswith("pose_embedding") for k in missing)
    latents, t, cond = tiny_inputs(with_ipi)
    with torch.no_grad():
        assert torch.equal(animatex(latents, t, cond), unianimate(latents, t, cond))


def test_shape_mismatch_names_key_and_shapes():
    model = AnimateXDenoiser(tiny_denoiser_config())
    state = to_official_state_dict(model)
    state["out.2.weight"] = torch.zeros(4, 32, 3, 5)
    with pytest.raises(ValueError, match=r"out\.2\.weight.*\(4, 32, 3, 3\).*\(4, 32, 3, 5\)"):
        load_official_state_dict(model, state)


def test_strict_load_rejects_missing_and_unexpected_keys():
    model = AnimateXDenoiser(tiny_denoiser_config())
    state = to_official_state_dict(model)
    state.pop("out.0.weight")
    with pytest.raises(ValueError, match="missing key"):
        load_official_state_dict(model, state)
    state = to_official_state_dict(model) | {"not.a.key": torch.zeros(1)}
    with pytest.raises(ValueError, match="unexpected key"):
        load_official_state_dict(model, state)
    missing, unexpected = load_official_state_dict(model, state, strict=False)
    assert unexpected == ["not.a.key"]


def test_position_table_of_another_length_is_recomputed():
    source = AnimateXDenoiser(tiny_denoiser_config())
    target_config = tiny_denoiser_config()
    target_config.ipi.max_frames = 97  # a 96-frame model from a 32-frame checkpoint (official README)
    target = AnimateXDenoiser(target_config)
    missing, _ = load_official_state_dict(target, to_official_state_dict(source))
    assert missing == ["pose_embedding_before.pos_embed.pos_table"]
    assert target.ipi.keypoint_encoder.pos_embed.pos_table.shape[1] == 97


def test_clip_longer_than_position_table_is_a_clear_error():
    config = tiny_denoiser_config()
    config.ipi.max_frames = 4
    model = AnimateXDenoiser(config)
    latents, t, cond = tiny_inputs(config)
    with pytest.raises(ValueError, match="max_frames >= 5"):
        model(latents, t, cond)


def test_bad_latent_shapes_are_clear_errors():
    model = AnimateXDenoiser(tiny_denoiser_config())
    with pytest.raises(ValueError, match=r"latents must be \(b, 4, f, h, w\)"):
        model(torch.zeros(1, 3, 2, 8, 8), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible by 2"):
        model(torch.zeros(1, 4, 2, 9, 8), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="pose_images"):
        model(
            torch.zeros(1, 4, 2, 8, 8),
            torch.zeros(1, dtype=torch.long),
            DenoiserConditions(pose_images=torch.zeros(1, 3, 2, 64, 64)),
        )


def test_single_frame_local_image_equals_repeated_frames():
    model = AnimateXDenoiser(tiny_denoiser_config()).eval()
    randomize(model)
    latents, t, cond = tiny_inputs(model.config)
    repeated = DenoiserConditions(**{**vars(cond), "local_image": cond.local_image.expand(-1, -1, F, -1, -1)})
    with torch.no_grad():
        assert torch.allclose(model(latents, t, cond), model(latents, t, repeated), atol=1e-5)


@pytest.mark.parametrize("order,leaks", [("official", True), ("per_sample", False)])
def test_keypoint_row_order(order, leaks):
    config = tiny_denoiser_config()
    config.ipi.keypoint_row_order = order
    model = AnimateXDenoiser(config).eval()
    randomize(model)
    latents, t, cond = tiny_inputs(config)
    moved = cond.pose_keypoints.clone()
    moved[0] += 0.3  # move sample 0's keypoints only
    with torch.no_grad():
        base = model(latents, t, cond)
        other = model(latents, t, DenoiserConditions(**{**vars(cond), "pose_keypoints": moved}))
    assert not torch.equal(base[0], other[0])
    assert torch.equal(base[1], other[1]) != leaks


def test_checkpoint_blocks_of_the_paper_model():
    with torch.device("meta"):
        model = AnimateXDenoiser(DenoiserConfig())
    blocks = model.checkpoint_blocks()
    kinds = [type(b).__name__ for b in blocks]
    assert kinds.count("ResBlock") == 22 and kinds.count("SpatialTransformer") == 16
    assert kinds.count("TemporalTransformer") == 17
