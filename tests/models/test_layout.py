"""State-dict layout of the full-size denoiser vs the official checkpoints' (built on the meta device)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from animatex_train.models.config import DenoiserConfig, ImplicitPoseIndicatorConfig
from animatex_train.models.official import from_official_key, to_official_key, to_official_state_dict
from animatex_train.models.unet import AnimateXDenoiser

REFERENCE = Path(__file__).resolve().parents[1] / "fixtures" / "reference"


def _read_tsv(name: str) -> tuple[dict[str, tuple[int, ...]], int]:
    lines = (REFERENCE / name).read_text().splitlines()
    header, rows = lines[0], lines[1:]
    total = int(header.split("total parameters ")[1].split()[0])
    layout = {}
    for row in rows:
        key, shape, dtype = row.split("\t")
        assert dtype == "float32"
        layout[key] = tuple(int(s) for s in shape.strip("[]").split(",") if s.strip())
    return layout, total


def _official_layout(config: DenoiserConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = AnimateXDenoiser(config)
    return {k: tuple(v.shape) for k, v in to_official_state_dict(model).items()}


def test_paper_config_matches_animatex_checkpoint_layout():
    layout = _official_layout(DenoiserConfig())
    reference, total = _read_tsv("animatex_unet_keys.tsv")
    assert len(reference) == 2100
    extra, absent = sorted(set(layout) - set(reference)), sorted(set(reference) - set(layout))
    assert not extra and not absent, (extra[:5], absent[:5])
    mismatched = {k: (layout[k], reference[k]) for k in reference if layout[k] != reference[k]}
    assert not mismatched, list(mismatched.items())[:5]
    with torch.device("meta"):
        params = sum(p.numel() for p in AnimateXDenoiser(DenoiserConfig()).parameters())
    buffers = 33 * 1024  # the keypoint position table is the only persistent buffer
    assert params == 1_817_708_556 == total
    assert sum(torch.Size(s).numel() for s in layout.values()) == params + buffers


def test_ipi_off_matches_unianimate_checkpoint_layout():
    layout = _official_layout(DenoiserConfig(ipi=ImplicitPoseIndicatorConfig(enabled=False)))
    reference, total = _read_tsv("unianimate_unet_keys.tsv")
    assert layout == reference
    assert sum(torch.Size(s).numel() for s in layout.values()) == total == 1_416_564_300


@pytest.mark.parametrize("name", ["animatex_unet_keys.tsv", "unianimate_unet_keys.tsv"])
def test_key_map_round_trips(name):
    reference, _ = _read_tsv(name)
    for key in reference:
        native = from_official_key(key)
        assert to_official_key(native) == key
        assert "temopral" not in native and "_p." not in native.split("pose_attention")[-1]


def test_zero_y_is_not_in_the_state_dict():
    with torch.device("meta"):
        model = AnimateXDenoiser(DenoiserConfig())
    assert "zero_y" not in model.state_dict()
    assert tuple(model.zero_y.shape) == (1, 77, 1024)
