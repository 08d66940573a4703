"""FrozenVAE (tiny, random weights): shapes, chunking, scaling, frozen state, loading paths and errors."""

from __future__ import annotations

import re

import pytest
import torch
from diffusers.loaders.single_file_utils import create_vae_diffusers_config_from_ldm
from torch import nn

from animatex_train.encoders.vae import SD21_VAE_KWARGS, FrozenVAE, VAEConfig


@pytest.fixture(autouse=True)
def _plain_cpu_convolutions():
    """oneDNN builds a kernel per new conv input shape (~0.2 s each on a 2-core CPU); these tests use many shapes
    of a tiny network, where the plain kernels are faster. Numerics do not depend on it."""
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    yield
    torch.backends.mkldnn.enabled = enabled


@pytest.fixture(scope="module")
def vae() -> FrozenVAE:
    return FrozenVAE(VAEConfig(tiny=True))


def _frames(n: int = 3, h: int = 32, w: int = 24) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_encode_gives_raw_posterior(vae: FrozenVAE) -> None:
    mean, std = vae.encode_pixels(_frames())
    assert mean.shape == std.shape == (3, 4, 4, 3)
    assert mean.dtype == std.dtype == torch.float32
    assert (std > 0).all()
    assert not mean.requires_grad


def test_chunking_does_not_change_results() -> None:
    frames = _frames(n=3)
    one = FrozenVAE(VAEConfig(tiny=True, encode_chunk_size=1, decode_chunk_size=1))
    many = FrozenVAE(VAEConfig(tiny=True, encode_chunk_size=2, decode_chunk_size=3))
    mean_1, std_1 = one.encode_pixels(frames)
    mean_n, std_n = many.encode_pixels(frames)
    torch.testing.assert_close(mean_1, mean_n)
    torch.testing.assert_close(std_1, std_n)
    torch.testing.assert_close(one.decode(mean_1), many.decode(mean_1))


def test_decode_shape_and_range(vae: FrozenVAE) -> None:
    latents = torch.randn(3, 4, 4, 3) * 10  # large values push the random decoder past [-1, 1]
    pixels = vae.decode(latents)
    assert pixels.shape == (3, 3, 32, 24) and pixels.dtype == torch.float32
    assert pixels.min() >= -1 and pixels.max() <= 1
    with pytest.raises(ValueError, match="b c f h w -> \\(b f\\) c h w"):
        vae.decode(torch.randn(1, 4, 2, 4, 3))


def test_scale_round_trip(vae: FrozenVAE) -> None:
    raw = torch.randn(2, 4, 8, 6)
    assert vae.scale_factor == 0.18215
    torch.testing.assert_close(vae.config.to_model_latents(raw), raw * 0.18215)
    torch.testing.assert_close(vae.config.from_model_latents(vae.config.to_model_latents(raw)), raw)


def test_decode_takes_model_space_latents(vae: FrozenVAE) -> None:
    raw = torch.randn(2, 4, 4, 3)
    expected = vae.model.decode(raw).sample.clamp(-1, 1)
    torch.testing.assert_close(vae.decode(vae.config.to_model_latents(raw)), expected)


def test_sample_posterior_follows_generator() -> None:
    mean, std = torch.randn(2, 4, 8, 6), torch.rand(2, 4, 8, 6) + 0.1
    a = FrozenVAE.sample_posterior(mean, std, torch.Generator().manual_seed(0))
    b = FrozenVAE.sample_posterior(mean, std, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    expected = mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, expected)


def test_frozen_and_stays_in_eval(vae: FrozenVAE) -> None:
    assert vae.frozen is True
    assert not any(p.requires_grad for p in vae.parameters())
    parent = nn.ModuleDict({"vae": vae, "head": nn.Linear(2, 2)})
    parent.train()
    assert parent["head"].training
    assert not any(m.training for m in vae.modules())
    vae.train(True)
    assert not vae.training


def test_tiny_init_is_seeded_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = FrozenVAE(VAEConfig(tiny=True, seed=0))
    assert torch.equal(torch.get_rng_state(), state)
    b = FrozenVAE(VAEConfig(tiny=True, seed=0))
    c = FrozenVAE(VAEConfig(tiny=True, seed=1))
    first = next(iter(a.state_dict()))
    assert torch.equal(a.state_dict()[first], b.state_dict()[first])
    assert not torch.equal(a.state_dict()[first], c.state_dict()[first])


def test_missing_checkpoint_names_the_key(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"vae\.checkpoint.*v2-1_512-ema-pruned"):
        FrozenVAE(VAEConfig(checkpoint=str(tmp_path / "v2-1_512-ema-pruned.ckpt")))
    with pytest.raises(ValueError, match=r"vae\.checkpoint"):
        VAEConfig()


def test_resolution_not_multiple_of_8(vae: FrozenVAE) -> None:
    with pytest.raises(ValueError, match=r"resolutions_px.*multiples of 8"):
        vae.encode_pixels(torch.zeros(1, 3, 36, 24))


def _to_ldm_keys(state_dict: dict[str, torch.Tensor], num_levels: int = 4) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL keys -> the original LDM keys (inverse of diffusers' converter), for fixtures."""
    out = {}
    for key, value in state_dict.items():
        new = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m.group(1)) + 1}.", new)
        new = re.sub(
            r"decoder\.up_blocks\.(\d+)\.resnets\.",
            lambda m: f"decoder.up.{num_levels - 1 - int(m.group(1))}.block.",
            new,
        )
        new = re.sub(
            r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
            lambda m: f"decoder.up.{num_levels - 1 - int(m.group(1))}.upsample.",
            new,
        )
        attention = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
        for diffusers_name, ldm_name in attention.items():
            new = new.replace(f"mid_block.attentions.0.{diffusers_name}.", f"mid.attn_1.{ldm_name}.")
        if ".attn_1." in new and new.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]  # LDM attention projections are 1x1 convs
        out[new] = value
    return out


def test_loads_single_file_ldm_checkpoint(tmp_path) -> None:
    source = FrozenVAE(VAEConfig(tiny=True, seed=0))
    ldm = {f"first_stage_model.{k}": v for k, v in _to_ldm_keys(source.model.state_dict()).items()}
    ldm["model.diffusion_model.some_unet_weight"] = torch.zeros(1)  # a full SD checkpoint holds the UNet too
    path = tmp_path / "sd.ckpt"
    torch.save({"state_dict": ldm, "global_step": 1}, path)
    loaded = FrozenVAE(VAEConfig(tiny=True, seed=1, checkpoint=str(path)))
    for key, value in source.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key


def test_loads_diffusers_folder(tmp_path) -> None:
    source = FrozenVAE(VAEConfig(tiny=True, seed=0))
    source.model.save_pretrained(tmp_path / "vae")
    loaded = FrozenVAE(VAEConfig(tiny=True, seed=1, checkpoint=str(tmp_path)))  # pipeline folder with vae/
    frames = _frames(n=1)
    torch.testing.assert_close(loaded.encode_pixels(frames)[0], source.encode_pixels(frames)[0])


class _NotATensor:
    pass


def test_refuses_pickled_objects(tmp_path) -> None:
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _NotATensor()}, path)
    with pytest.raises(OSError, match="weights-only"):
        FrozenVAE(VAEConfig(tiny=True, checkpoint=str(path)))


def test_sd21_architecture_is_diffusers_mapping_of_official_ddconfig() -> None:
    # `auto_encoder.ddconfig` of configs/Animate_X_infer.yaml, mapped by diffusers' own LDM -> diffusers function.
    ddconfig = {
        "double_z": True,
        "z_channels": 4,
        "resolution": 256,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 128,
        "ch_mult": [1, 2, 4, 4],
        "num_res_blocks": 2,
        "attn_resolutions": [],
        "dropout": 0.0,
    }
    original = {"model": {"params": {"first_stage_config": {"params": {"ddconfig": ddconfig, "embed_dim": 4}}}}}
    mapped = create_vae_diffusers_config_from_ldm(original, {})
    for key, value in mapped.items():
        if key != "scaling_factor":
            got = SD21_VAE_KWARGS[key]
            assert (list(got) if isinstance(got, tuple) else got) == value, key
    assert mapped["scaling_factor"] == VAEConfig(tiny=True).scale_factor
