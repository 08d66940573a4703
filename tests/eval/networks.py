"""Random-weight metric networks of the exact architectures, written to files the evaluation loads by path
(the real weights cannot be downloaded here)."""

from __future__ import annotations

import math
from pathlib import Path
from unittest import mock

import torch


def _he_scaled(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v * math.sqrt(6.0) if v.ndim == 5 else v for k, v in state.items()}


def write_random_metric_weights(
    folder: Path, seed: int = 0, only: tuple[str, ...] = ("fid_inception", "vgg16", "i3d", "r3d50")
) -> dict[str, Path]:
    """``{fid_inception, vgg16, i3d, r3d50} -> path`` of seeded random weights. Convolution weights of the Inception
    and of the two 3D networks are scaled by sqrt(6) (He variance), as the reference fixtures do: with PyTorch's
    default init and eval-mode BatchNorm their features are input-independent (I3D logits differ by ~5e-8 between
    inputs, so FVD would be ~0 whatever the videos)."""
    import pytorch_fid.inception as fid_inception
    import torchvision

    from animatex_train.eval.metrics.i3d import InceptionI3d
    from animatex_train.eval.metrics.r3d50 import ResNet3D50

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    with (
        mock.patch.object(fid_inception, "load_state_dict_from_url", lambda *a, **k: None),
        mock.patch("torchvision.models.inception.Inception3.load_state_dict", lambda *a, **k: None),
    ):
        inception = fid_inception.fid_inception_v3().state_dict()
    states = {
        "fid_inception": {k: v * math.sqrt(6.0) if k.endswith("conv.weight") else v for k, v in inception.items()},
        "vgg16": torchvision.models.vgg16(weights=None).features.state_dict(prefix="features."),
        "i3d": _he_scaled(InceptionI3d().state_dict()),
        "r3d50": {"state_dict": {f"module.{k}": v for k, v in _he_scaled(ResNet3D50().state_dict()).items()}},
    }
    paths = {}
    for name, state in states.items():
        if name not in only:
            continue
        paths[name] = folder / f"{name}.pth"
        torch.save(state, paths[name])
    return paths
