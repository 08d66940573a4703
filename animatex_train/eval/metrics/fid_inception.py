"""FID's feature network as DisCo reports it: pytorch-fid's FID-InceptionV3 (the TF 2015-12-05 port), pool3
features of ``[0, 1]`` RGB frames that it resizes to 299x299 (bilinear, no antialias) and maps to ``[-1, 1]``."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytorch_fid.inception as fid_inception
import torch
from torch import nn

from animatex_train.eval.metrics.weights import load_state_dict


def build_fid_inception(state: dict[str, torch.Tensor]) -> fid_inception.InceptionV3:
    """pytorch-fid's ``InceptionV3([pool3])`` with ``state`` as its weights.

    pytorch-fid has no path argument: ``fid_inception_v3`` always calls ``load_state_dict_from_url``. We substitute
    that one call during construction, so the network is exactly pytorch-fid's, with our file's weights and no
    download (its ``load_state_dict`` stays strict).
    """
    with mock.patch.object(fid_inception, "load_state_dict_from_url", lambda *args, **kwargs: state):
        return fid_inception.InceptionV3([fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])


class FIDInceptionFeatures(nn.Module):
    """``(b, H, W, 3)`` uint8 RGB frames -> ``(b, 2048)`` float32 pool3 features (pytorch-fid's pipeline).

    Args:
        path: ``pt_inception-2015-12-05-6726825d.pth`` (a state dict of pytorch-fid's ``fid_inception_v3``).
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.net = build_fid_inception(load_state_dict(path))
        self.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        device = next(self.parameters()).device
        images = frames.to(device).permute(0, 3, 1, 2).float() / 255.0  # = torchvision ToTensor on PIL RGB
        return self.net(images)[0].flatten(1)
