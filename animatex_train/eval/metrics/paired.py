"""The paired per-frame metrics exactly as DisCo computes them (tool/metrics/ssim_l1_lpips_psnr.py at c4fa48a):
PSNR* (float64), the legacy overflowing PSNR, SSIM (grayscale, 7x7 uniform window) and L1 (divided by H*W).

Every function takes one generated and one ground-truth frame, ``(H, W, 3)`` uint8 RGB. DisCo reads BGR with
cv2; each of these metrics is either channel-symmetric or converts to gray with the matching coefficients, so
RGB input gives the same numbers. A frame whose size differs from the GT is first resized to the GT size with
``cv2.resize`` (bilinear), as DisCo does for PSNR/SSIM/L1 (never for LPIPS). See docs/evaluation.md
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from skimage.metrics import structural_similarity

PSNR_IDENTICAL_DB = 100.0  # DisCo's value for mse == 0


def _check(gen: np.ndarray, gt: np.ndarray) -> None:
    for name, frame in (("generated", gen), ("ground-truth", gt)):
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(
                f"paired metrics: the {name} frame must be (H, W, 3) uint8 RGB, got "
                f"{frame.shape} {frame.dtype}; decode frames to uint8 first"
            )


def resize_to_gt(gen: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``gen`` resized to ``gt``'s size with cv2's default bilinear filter (DisCo ssim_l1_lpips_psnr.py:65-66)."""
    _check(gen, gt)
    if gen.shape == gt.shape:
        return gen
    return cv2.resize(gen, (gt.shape[1], gt.shape[0]))


def psnr_star(gen: np.ndarray, gt: np.ndarray) -> float:
    """PSNR* (Animate-X's name for DisCo's fixed PSNR): ``20 log10(255 / sqrt(mse))``, mse in float64 over
    H x W x 3 on 0-255 values; 100 for identical frames."""
    gen = resize_to_gt(gen, gt)
    mse = np.mean((gen.astype(np.float64) - gt.astype(np.float64)) ** 2)
    return PSNR_IDENTICAL_DB if mse == 0 else 20 * math.log10(255.0 / math.sqrt(mse))


def psnr_legacy_uint8(gen: np.ndarray, gt: np.ndarray) -> float:
    """LEGACY, do not report as PSNR*: DisCo's pre-2024-04 formula, whose uint8 difference and square wrap modulo
    256 (so every squared error is <= 249 and the value is >= 24.17 dB). Only for reproducing the copied "PSNR"
    columns of older tables (Animate-X Tables 7/8); the overflow is the point, so it is computed in uint8 on
    purpose (numpy's mean still accumulates in float64, as in DisCo)."""
    gen = resize_to_gt(gen, gt)
    with np.errstate(over="ignore"):
        mse = np.mean((gen - gt) ** 2)
    return PSNR_IDENTICAL_DB if mse == 0 else 20 * math.log10(255.0 / math.sqrt(mse))


def l1_disco(gen: np.ndarray, gt: np.ndarray) -> float:
    """DisCo's L1: ``mean(|gen - gt|) / (H * W)`` on 0-255 values, which is why published L1s are ~1e-4 and depend
    on the resolution (H, W of the GT)."""
    gen = resize_to_gt(gen, gt)
    h, w = gt.shape[:2]
    return float(np.mean(np.abs(gen.astype(np.float64) - gt.astype(np.float64)) / (h * w)))


def ssim_disco(gen: np.ndarray, gt: np.ndarray) -> float:
    """DisCo's SSIM: cv2 grayscale (uint8), then scikit-image's defaults: 7x7 uniform window, K1 0.01, K2 0.03,
    sample covariance, data range 255 from the dtype. (torchmetrics/piq use an 11x11 Gaussian on RGB: other
    numbers, hence scikit-image.)"""
    gen = resize_to_gt(gen, gt)
    gen_gray = cv2.cvtColor(gen, cv2.COLOR_RGB2GRAY)
    gt_gray = cv2.cvtColor(gt, cv2.COLOR_RGB2GRAY)
    return float(structural_similarity(gen_gray, gt_gray))


PAIRED_METRICS = {
    "psnr_star": psnr_star,
    "ssim": ssim_disco,
    "l1": l1_disco,
    "psnr_legacy_uint8": psnr_legacy_uint8,
}
