"""``--mode official`` sampling against the official loop (fixture ``sampling_a``: the official
``DiffusionDDIM.ddim_sample_loop`` with the released kwargs, on fixture A's network, from a given x_T).

Every size, schedule value and sampler setting is read from the fixture's JSON (a held-back fixture with
another configuration runs through this same test)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from animatex_train.diffusion.gaussian import DiffusionConfig, GaussianDiffusion
from animatex_train.diffusion.sampling import SamplerConfig
from animatex_train.inference.conditions import ClipInputs, clip_conditions
from animatex_train.inference.sampling import SamplingRecord, generate_latents
from animatex_train.models.official import config_from_official, load_official_state_dict
from animatex_train.models.unet import AnimateXDenoiser

FIXTURE = os.environ.get("ANIMATEX_SAMPLING_FIXTURE", "sampling_a")


@pytest.fixture(scope="module")
def fixture(request):
    root = request.config.rootpath / "tests" / "fixtures" / "reference"
    meta = json.loads((root / f"{FIXTURE}.json").read_text())
    weights_name = meta["model"]["weights"].split()[0]  # "parity_a.safetensors model.* (...)"
    network_meta = json.loads((root / weights_name.replace(".safetensors", ".json")).read_text())
    network = load_file(str(root / weights_name))
    tensors = load_file(str(root / meta["file"]))
    model = AnimateXDenoiser(config_from_official(network_meta)).eval()
    missing, unexpected = load_official_state_dict(
        model, {k.removeprefix("model."): v for k, v in network.items() if k.startswith("model.")}, strict=True
    )
    assert missing == [] and unexpected == []
    model.set_empty_prompt_tokens(network["input.zero_y"])
    return meta, tensors, model


def _diffusion(meta: dict) -> GaussianDiffusion:
    cfg = meta["config"]["cfg.Diffusion (as passed to DIFFUSION.build)"]
    schedule = cfg["schedule_param"]
    assert cfg["schedule"] == "linear_sd" and cfg["mean_type"] == "v"
    return GaussianDiffusion(
        DiffusionConfig(
            num_train_timesteps=schedule["num_timesteps"],
            beta_start=schedule["init_beta"],
            beta_end=schedule["last_beta"],
            zero_terminal_snr=schedule["zero_terminal_snr"],
            offset_noise_strength=cfg["noise_strength"],
        )
    )


def _clip_inputs(tensors: dict) -> ClipInputs:
    """The fixture's inputs as the pipeline holds them before assembly (the reference once, pose frames, ...)."""
    local = tensors["input.local_image"].clone()  # (1, 3, f, H, W) uint8: the reference repeated over f
    assert all(torch.equal(local[:, :, i], local[:, :, 0]) for i in range(local.shape[2]))
    return ClipInputs(
        reference=local[0, :, 0].float() / 255.0,
        pose_images=tensors["input.dwpose"][0].transpose(0, 1).float() / 255.0,
        keypoints=tensors["input.pose_keypoints"][0].clone(),
        image_embedding=tensors["input.image"].reshape(-1).clone(),
        driving_clip=tensors["input.driving_clip"].reshape(local.shape[2] + 1, -1).clone(),
    )


@pytest.mark.parity_loop  # 62 forwards at 768x512 (6,144-token attention): 6-18 min on 2 cores; `make test-parity`
def test_official_mode_reproduces_the_official_sampling_loop(fixture):
    meta, tensors, model = fixture
    call = meta["config"]["sampler_call"]
    sampler = SamplerConfig(num_steps=call["ddim_timesteps"], eta=call["eta"], guidance_scale=call["guide_scale"])
    conditions = clip_conditions(_clip_inputs(tensors), ref_mode="local_image", repeat_local_image=True)
    # The official branch keys: image, local_image, dwpose, pose_embeddings; no randomref.
    assert conditions.ref_latent is None and conditions.local_image.shape == tensors["input.local_image"].shape
    calls: list[tuple[int, bool]] = []

    def model_fn(x, t, conditions):
        calls.append((int(t[0]), conditions is None))
        return model(x, t, conditions)

    record = SamplingRecord()
    with torch.no_grad():
        x0 = generate_latents(
            model_fn,
            conditions,
            tensors["input.x_T"].clone(),
            _diffusion(meta),
            sampler,
            cfg_batch="off",
            record=record,
        )
    expected_t = meta["timesteps"]
    assert record.timesteps == expected_t
    assert calls == [(t, unconditional) for t in expected_t for unconditional in (False, True)]  # cond first
    reference = tensors["output.x0"]
    error = float((x0 - reference).abs().max()) / float(reference.abs().max())
    print(f"\n{FIXTURE}: final latents max|ours - official| / max|official| = {error:.3e}")
    assert error <= 1e-4


def test_first_step_matches(fixture):
    """The first step alone (both branches' v and the latent after it), to localise a drift."""
    meta, tensors, model = fixture
    call = meta["config"]["sampler_call"]
    conditions = clip_conditions(_clip_inputs(tensors), repeat_local_image=True)
    x_t = tensors["input.x_T"].clone()
    t = torch.full((x_t.shape[0],), meta["timesteps"][0])
    with torch.no_grad():
        v_c, v_u = model(x_t, t, conditions), model(x_t, t, None)
    for name, ours in (("v_cond", v_c), ("v_uncond", v_u)):
        reference = tensors[f"intermediate.step1.{name}"]
        assert float((ours - reference).abs().max()) <= 1e-5 * max(1.0, float(reference.abs().max())), name
    from animatex_train.diffusion.sampling import DDIMSampler

    ddim = DDIMSampler(
        _diffusion(meta), SamplerConfig(num_steps=call["ddim_timesteps"], guidance_scale=call["guide_scale"])
    )
    after = ddim.step(x_t, t, ddim.guide(v_c, v_u))
    reference = tensors["output.x_after_step1"]
    assert float((after - reference).abs().max()) / float(reference.abs().max()) <= 1e-5


@pytest.mark.parametrize("position", ["second", "middle", "last"])
def test_steps_along_the_official_trajectory(fixture, position):
    """Single guided DDIM steps taken from the official trajectory's latents land on its next latents: with the
    first step above and the timestep list, this checks the loop at its start, middle and end (the last step lands
    on alpha_0, not 1) in 6 forwards; the whole loop is ``test_official_mode_reproduces_the_official_sampling_loop``."""
    from animatex_train.diffusion.sampling import DDIMSampler

    meta, tensors, model = fixture
    call = meta["config"]["sampler_call"]
    timesteps, trajectory = meta["timesteps"], tensors["intermediate.trajectory"]
    k = {"second": 1, "middle": len(timesteps) // 2, "last": len(timesteps) - 1}[position]
    ddim = DDIMSampler(
        _diffusion(meta),
        SamplerConfig(num_steps=call["ddim_timesteps"], eta=call["eta"], guidance_scale=call["guide_scale"]),
    )
    assert [int(t) for t in ddim.timesteps] == timesteps
    conditions = clip_conditions(_clip_inputs(tensors), repeat_local_image=True)
    x_t = trajectory[k - 1].clone()
    t = torch.full((x_t.shape[0],), timesteps[k])
    with torch.no_grad():
        after = ddim.step(x_t, t, ddim.guide(model(x_t, t, conditions), model(x_t, t, None)))
    reference = trajectory[k]
    assert float((after - reference).abs().max()) / float(reference.abs().max()) <= 1e-5
