"""Numeric parity with the official Animate-X denoiser (fixture A, produced from antgroup/animate-x @ e41d3f0)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from animatex_train.models.official import config_from_official, load_official_state_dict, official_forward
from animatex_train.models.unet import AnimateXDenoiser


@pytest.fixture(scope="module")
def fixture_a(request):
    root = request.config.rootpath / "tests" / "fixtures" / "reference"
    meta = json.loads((root / "parity_a.json").read_text())
    tensors = load_file(str(root / "parity_a.safetensors"))
    model = AnimateXDenoiser(config_from_official(meta)).eval()
    for p in model.parameters():  # anything not loaded would show up as NaN in the outputs
        p.data.fill_(float("nan"))
    missing, unexpected = load_official_state_dict(
        model, {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}, strict=True
    )
    assert missing == [] and unexpected == []
    model.set_empty_prompt_tokens(tensors["input.zero_y"])
    inputs = {k.removeprefix("input."): v.clone() for k, v in tensors.items() if k.startswith("input.")}
    return meta, tensors, model, inputs


def _kwargs(meta: dict, case: str, inputs: dict) -> dict:
    available = dict(
        image=inputs["image"],
        local_image=inputs["local_image"].to(torch.float32) / 255.0,
        dwpose=inputs["dwpose"].to(torch.float32) / 255.0,
        randomref=inputs["randomref"],
        pose_embeddings=[inputs["pose_keypoints"], inputs["driving_clip"]],
    )
    spec = meta["cases"][case]
    kwargs = {k: available[k] for k in spec["kwargs_given"]}
    kwargs.update({k: None for k in spec["kwargs_None"]})
    return kwargs


@pytest.mark.parametrize("case", ["full", "no_randomref", "uncond", "randomref_mode"])
def test_forward_matches_official(fixture_a, case):
    meta, tensors, model, inputs = fixture_a
    with torch.no_grad():
        out = official_forward(model, inputs["x"], inputs["t"], **_kwargs(meta, case, inputs))
    reference = tensors[f"output.{case}"]
    assert out.shape == reference.shape
    tolerance = 1e-5 * max(1.0, float(reference.abs().max()))
    error = float((out - reference).abs().max())
    assert error <= tolerance, f"case {case}: max |ours - official| = {error:.3e} > {tolerance:.3e}"


def test_intermediates_match_official(fixture_a):
    """The IPI tokens and the time embedding also match (they locate a mismatch if the output ever drifts)."""
    meta, tensors, model, inputs = fixture_a
    b, f = inputs["x"].shape[0], inputs["x"].shape[2] + 1
    with torch.no_grad():
        q_p = model.ipi.keypoint_encoder(inputs["pose_keypoints"])
        f_i = model.ipi(inputs["pose_keypoints"], inputs["driving_clip"].reshape(b, f, -1), b, f)
        f_i_uncond = model.ipi(None, None, b, f)
    for name, ours in (("full.q_p", q_p), ("full.f_i", f_i), ("uncond.f_i", f_i_uncond)):
        reference = tensors[f"intermediate.{name}"]
        assert torch.allclose(ours, reference, atol=1e-5 * max(1.0, float(reference.abs().max()))), name
