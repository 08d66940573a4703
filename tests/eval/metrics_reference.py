"""The DisCo reference fixtures (``shared/reference/metrics_*``): where they are, their frames, and the seeded
random networks their JSON describes (regenerated here, hash-checked, never downloaded)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from PIL import Image

from animatex_train.eval.metrics.weights import state_dict_content_sha256

REPO_ROOT = Path(__file__).resolve().parents[2]


def fixture_dirs() -> list[Path]:
    """``METRICS_FIXTURES`` (os.pathsep-separated folders), else every ``shared/reference/metrics_*`` beside the
    checkout or one of its parents (CI lays ``shared/`` beside the clone)."""
    if os.environ.get("METRICS_FIXTURES"):
        return [Path(p) for p in os.environ["METRICS_FIXTURES"].split(os.pathsep) if p]
    for parent in REPO_ROOT.parents:
        found = sorted((parent / "shared" / "reference").glob("metrics_*/metrics_*.json"))
        if found:
            return [p.parent for p in found]
    return []


def load_json(directory: Path) -> dict:
    return json.loads(next(directory.glob("metrics_*.json")).read_text())


def tensors(directory: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(next(directory.glob("metrics_*.safetensors"))))


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def paired_cases(data: dict) -> list[str]:
    return [k for k, v in data["paired_metrics"].items() if isinstance(v, dict)]


def _checked(state: dict[str, torch.Tensor], recipe: dict, what: str) -> dict[str, torch.Tensor]:
    got = state_dict_content_sha256(state)
    assert got == recipe["content_sha256"], f"regenerated {what} differs from the fixture's ({got})"
    return state


def random_vgg16_state(recipe: dict) -> dict[str, torch.Tensor]:
    """``torch.manual_seed(seed); torchvision.models.vgg16(weights=None).state_dict()`` (the fixture's recipe)."""
    import torchvision

    torch.manual_seed(recipe["seed"])
    return _checked(torchvision.models.vgg16(weights=None).state_dict(), recipe, "VGG16")


def random_fid_inception_state(recipe: dict) -> dict[str, torch.Tensor]:
    """pytorch-fid's ``fid_inception_v3`` with its weight loading made a no-op, seeded, conv weights scaled."""
    import pytorch_fid.inception as fid_inception

    torch.manual_seed(recipe["seed"])
    with (
        mock.patch.object(fid_inception, "load_state_dict_from_url", lambda *a, **k: None),
        mock.patch("torchvision.models.inception.Inception3.load_state_dict", lambda *a, **k: None),
    ):
        net = fid_inception.fid_inception_v3()
    scale = recipe.get("conv_weight_scale", math.sqrt(6.0))
    state = {k: (v * scale if k.endswith("conv.weight") else v) for k, v in net.state_dict().items()}
    return _checked(state, recipe, "FID-Inception")
