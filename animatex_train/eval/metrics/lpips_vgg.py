"""LPIPS with the VGG16 trunk as DisCo computes it (tool/metrics/ssim_l1_lpips_psnr.py:85-108): the ``lpips``
package, version 0.1, its bundled linear heads, one frame pair at a time, and by default DisCo's quirk of feeding
``[0, 1]`` images to a network that expects ``[-1, 1]`` (``input_range="unit"``)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import lpips
import torch
from torch import nn

from animatex_train.eval.metrics.weights import load_state_dict

InputRange = Literal["unit", "signed"]


def _trunk_state(lpips_net: lpips.LPIPS, torchvision_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision ``vgg16`` keys (``features.<i>.weight``) -> lpips' sliced trunk keys (``slice<k>.<i>.weight``):
    lpips splits ``features`` into five ``nn.Sequential`` slices that keep the layer indices as module names."""
    mapped = {}
    for name in lpips_net.net.state_dict():
        slice_name, index, param = name.split(".")
        source = f"features.{index}.{param}"
        if source not in torchvision_state:
            raise KeyError(f"the VGG16 file lacks {source!r}: is it torchvision's vgg16 state dict?")
        mapped[name] = torchvision_state[source]
    return mapped


class DiscoLPIPS(nn.Module):
    """LPIPS-VGG distance per frame pair.

    Args:
        vgg16_path: torchvision's ``vgg16-397923af.pth`` (or any state dict of ``torchvision.models.vgg16``).
        input_range: ``unit`` feeds ``x / 255`` unscaled as DisCo does (the published tables); ``signed`` feeds
            ``x / 127.5 - 1``, the range lpips was trained for (the "correct" LPIPS, other numbers).
    """

    def __init__(self, vgg16_path: str | Path, input_range: InputRange = "unit") -> None:
        super().__init__()
        if input_range not in ("unit", "signed"):
            raise ValueError(f"lpips input_range: expected 'unit' (DisCo) or 'signed', got {input_range!r}")
        self.input_range = input_range
        # pnet_rand: build the trunk without torchvision's download; the weights come from our file just below.
        # lpips 0.1.4 still passes torchvision's deprecated `pretrained=` argument: silence that warning only.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*", category=UserWarning)
            self.net = lpips.LPIPS(net="vgg", version="0.1", pnet_rand=True, verbose=False)
        self.net.net.load_state_dict(_trunk_state(self.net, load_state_dict(vgg16_path)), strict=True)
        self.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, gen: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """``(b, H, W, 3)`` uint8 RGB frame pairs of one size -> ``(b,)`` distances (float32)."""
        if gen.shape != gt.shape:
            raise ValueError(
                f"LPIPS: generated frames are {tuple(gen.shape[1:3])} but GT frames are "
                f"{tuple(gt.shape[1:3])}; DisCo's LPIPS fails on this too. Evaluate at one resolution "
                f"(recipe key resolution_px) so generated and GT frames match"
            )
        device = next(self.parameters()).device
        images = [x.to(device).permute(0, 3, 1, 2).float() / 255.0 for x in (gen, gt)]  # = torchvision ToTensor
        if self.input_range == "signed":
            images = [2 * x - 1 for x in images]
        return self.net(images[0], images[1], normalize=False).flatten()
