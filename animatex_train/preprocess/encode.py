"""Per-clip features from the frozen encoders (VAE posterior, pooled CLIP) and deterministic media encoders.

Everything stored is a deterministic function of the clip's pixels: the encoders run in eval mode with
fixed batch composition, JPEG uses a fixed quality, and H.264 uses single-threaded x264 with fixed
settings and FFmpeg's ``bitexact`` flags (no encoder version or timestamps in the container).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from animatex_train.encoders.clip import FrozenCLIPImageEncoder
from animatex_train.encoders.vae import FrozenVAE
from animatex_train.preprocess.config import EncodersConfig


def torch_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("encoders.device=cuda but torch sees no CUDA device; use encoders.device=auto or cpu")
    return torch.device(device)


class ClipEncoder:
    """Runs the frozen VAE and CLIP image encoder over a clip's frames.

    Args:
        config: the encoders' settings.
    """

    def __init__(self, config: EncodersConfig) -> None:
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.device = torch_device(config.device)
        self.vae = FrozenVAE(config.vae).to(self.device)
        self.clip = FrozenCLIPImageEncoder(config.clip).to(self.device)
        self.clip.release_text_tower()  # only the image tower is used here

    @torch.inference_mode()
    def encode(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Features of every frame of a clip.

        Args:
            frames: ``(t, h, w, 3)`` uint8 RGB, ``h`` and ``w`` multiples of 8.

        Returns:
            ``latent_mean`` and ``latent_std``, each ``(t, 4, h/8, w/8)`` float16 (raw posterior, unscaled),
            and ``clip_embeds`` ``(t, d)`` float16.
        """
        pixels = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        pixels = pixels.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)  # [0, 255] -> [-1, 1]
        mean, std = self.vae.encode_pixels(pixels)
        embeds = self.clip.encode_images(frames)
        return (
            mean.to(torch.float16).cpu().numpy(),
            std.to(torch.float16).cpu().numpy(),
            embeds.to(torch.float16).cpu().numpy(),
        )


def jpeg_bytes(frame: np.ndarray, quality: int) -> bytes:
    """Baseline JPEG of an ``(h, w, 3)`` uint8 RGB frame at a fixed quality (libjpeg is deterministic)."""
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return data.tobytes()
