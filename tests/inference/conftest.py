"""Fixtures for the ``animate`` tests: tiny random-weight networks written in every format ``animate`` reads,
tiny DWPose ONNX files, the small real media of ``tests/fixtures/inference``."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import save_file

from animatex_train.diffusion.sampling import SamplerConfig
from animatex_train.inference.settings import (
    AnimateSettings,
    InputSettings,
    OutputSettings,
    SamplingSettings,
    WeightsSettings,
)
from animatex_train.models.config import tiny_denoiser_config
from animatex_train.models.official import to_official_state_dict
from animatex_train.models.unet import AnimateXDenoiser
from animatex_train.preprocess.pose.tiny_dwpose import write_tiny_dwpose

REPO = Path(__file__).resolve().parents[2]
MEDIA = REPO / "tests" / "fixtures" / "inference"
VIDEOS = REPO / "tests" / "fixtures" / "videos"


def randomized_denoiser(seed: int = 0) -> AnimateXDenoiser:
    """The tiny real architecture with every parameter random (the zero-initialised heads too), so every input
    reaches the output."""
    model = AnimateXDenoiser(tiny_denoiser_config()).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / max(1, p[0].numel()) ** 0.5)
    return model


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> SimpleNamespace:
    """One random tiny denoiser as our export, the official layout (+ its config) and a training checkpoint."""
    from animatex_train.training.checkpoint import STATE, commit_checkpoint, step_dir_name

    root = tmp_path_factory.mktemp("weights")
    model = randomized_denoiser()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    config = asdict(model.config)
    export = root / "tiny.safetensors"
    save_file(state, str(export), metadata={"animatex.denoiser_config": json.dumps(config), "format": "pt"})
    official = root / "tiny-official.pth"
    torch.save({k: v.clone() for k, v in to_official_state_dict(state).items()}, official)
    model_config = root / "tiny-config.yaml"
    model_config.write_text(yaml.safe_dump({"denoiser": json.loads(json.dumps(config))}))
    # A training checkpoint: raw weights plus EMA shadow weights that differ (EMA is the default to load).
    ema = {k: v + 0.01 for k, v in state.items() if v.is_floating_point() and "pos_table" not in k}
    checkpoint = {
        "state_dict": {f"denoiser.{k}": v for k, v in state.items()},
        "global_step": 4,
        "hyper_parameters": {"config": {"denoiser": config}},
        "callbacks": {"EMA": {"shadow": ema, "num_updates": 4}},
    }
    runs = root / "run" / "checkpoints"
    tmp = runs / (step_dir_name(4) + ".tmp")
    tmp.mkdir(parents=True)
    torch.save(checkpoint, tmp / STATE)
    commit_checkpoint(tmp, runs / step_dir_name(4), 4, keep_last=2)
    return SimpleNamespace(
        model=model,
        export=export,
        official=official,
        model_config=model_config,
        training=runs,
        ema_state={**state, **ema},
    )


@pytest.fixture(scope="session")
def dwpose(tmp_path_factory) -> tuple[Path, Path]:
    return write_tiny_dwpose(tmp_path_factory.mktemp("dwpose"), blank_means_nobody=True)


@pytest.fixture(scope="session")
def fast_settings(weights, dwpose) -> AnimateSettings:
    """Small and quick: 64 x 64, 2 DDIM steps, our export, tiny encoders, DWPose stand-ins, no progress bars."""
    return AnimateSettings(
        weights=WeightsSettings(
            checkpoint=str(weights.export), tiny=True, dwpose_det=str(dwpose[0]), dwpose_pose=str(dwpose[1])
        ),
        inputs=InputSettings(size=(64, 64), frames=4),
        sampling=SamplingSettings(sampler=SamplerConfig(num_steps=2), device="cpu"),
        output=OutputSettings(progress=False),
    )


@pytest.fixture(scope="session")
def models(fast_settings):
    """The networks of ``fast_settings``, loaded once for the in-process tests."""
    from animatex_train.inference.pipeline import models_for

    return models_for(fast_settings)


def with_changes(settings: AnimateSettings, **sections) -> AnimateSettings:
    """``settings`` with ``inputs={...}``/``sampling={...}``/``output={...}`` fields replaced."""
    changed = {name: replace(getattr(settings, name), **fields) for name, fields in sections.items() if name != "mode"}
    if "mode" in sections:
        changed["mode"] = sections["mode"]
    return replace(settings, **changed)


@pytest.fixture(scope="session")
def inf() -> SimpleNamespace:
    """Helpers for the test modules (imported with --import-mode=importlib, they cannot import conftest)."""
    return SimpleNamespace(
        MEDIA=MEDIA, VIDEOS=VIDEOS, REPO=REPO, with_changes=with_changes, randomized_denoiser=randomized_denoiser
    )
