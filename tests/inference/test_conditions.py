"""Condition assembly: the released kwargs, the unconditional branch, and both branches in one batch."""

from __future__ import annotations

import torch

from animatex_train.inference.conditions import ClipInputs, clip_conditions, guidance_batch
from animatex_train.models.unet import DenoiserConditions


def _inputs(frames: int = 3, size: int = 64, seed: int = 0) -> ClipInputs:
    g = torch.Generator().manual_seed(seed)
    return ClipInputs(
        reference=torch.rand(3, size, size, generator=g),
        pose_images=torch.rand(frames + 1, 3, size, size, generator=g),
        keypoints=torch.rand(frames + 1, 2, 18, generator=g),
        image_embedding=torch.randn(64, generator=g),
        driving_clip=torch.randn(frames + 1, 64, generator=g),
        ref_latent=torch.randn(4, 1, size // 8, size // 8, generator=g),
    )


def test_official_assembly(inf):
    inputs = _inputs()
    official = clip_conditions(inputs, repeat_local_image=True)
    assert official.local_image.shape == (1, 3, 3, 64, 64) and official.ref_latent is None
    assert torch.equal(official.local_image[0, :, 2], inputs.reference)
    assert torch.equal(official.pose_images[0, :, 0], inputs.pose_images[0])  # frame 0 = the reference pose
    both = clip_conditions(inputs, ref_mode="both")
    assert both.ref_latent.shape == (1, 4, 1, 8, 8) and both.local_image.shape == (1, 3, 1, 64, 64)
    model = inf.randomized_denoiser()
    x, t = torch.randn(1, 4, 3, 8, 8), torch.tensor([500])
    with torch.no_grad():  # f identical frames or one broadcast frame: the same function up to rounding
        torch.testing.assert_close(model(x, t, official), model(x, t, clip_conditions(inputs)), rtol=1e-5, atol=1e-5)


def test_masked_sample_equals_the_unconditional_branch_bitwise(inf):
    """Every keep mask 0 gives the inputs of DenoiserConditions() exactly (batch 1: same kernels)."""
    model = inf.randomized_denoiser()
    x, t = torch.randn(1, 4, 3, 8, 8), torch.tensor([700])
    conditions = clip_conditions(_inputs(), ref_mode="both")
    zero = torch.zeros(1)
    masked = DenoiserConditions(
        **{
            **vars(conditions),
            "local_image_keep": zero,
            "ref_latent_keep": zero,
            "ipi_keep": zero,
            "image_keep": zero,
            "pose_images_keep": zero,
        }
    )
    with torch.no_grad():
        assert torch.equal(model(x, t, masked), model(x, t, None))
        assert not torch.equal(model(x, t, conditions), model(x, t, None))


def test_guidance_batch_equals_two_passes(inf):
    model = inf.randomized_denoiser()
    x, t = torch.randn(1, 4, 3, 8, 8), torch.tensor([300])
    conditions = clip_conditions(_inputs())
    with torch.no_grad():
        both = model(torch.cat([x, x]), torch.cat([t, t]), guidance_batch(conditions))
        cond, uncond = model(x, t, conditions), model(x, t, None)
    torch.testing.assert_close(both[:1], cond, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both[1:], uncond, rtol=1e-5, atol=1e-5)
