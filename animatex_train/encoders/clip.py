"""FrozenCLIPImageEncoder: OpenCLIP ViT-H-14 pooled image embeddings and the empty-prompt text features."""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

if TYPE_CHECKING:
    import open_clip

# open_clip is imported where a model is built, not here: it pulls in timm, and timm imports wandb whenever wandb
# is installed. Training only needs `load_zero_y`, so its processes stay free of both.

__all__ = ["CLIPConfig", "FrozenCLIPImageEncoder", "tiny_clip_model_config"]

_DOWNLOAD_HINT = (
    "Download open_clip_pytorch_model.bin (OpenCLIP ViT-H-14 as used by SD 2.x; it is in the Hugging Face repo "
    "Shuaishuai0219/Animate-X, and in laion/CLIP-ViT-H-14-laion2B-s32B-b79K) and set clip.checkpoint to its path."
)

# OpenAI CLIP statistics: the official `vit_mean` / `vit_std` (animatex/default_config.py).
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def tiny_clip_model_config(embed_dim: int) -> dict[str, object]:
    """An open_clip model config shaped like ViT-H-14's (224 px input, 77-token text), but tiny (~3.5 M params).

    Most parameters are the 49408-token text embedding, kept so the real tokenizer's ids fit. The text width
    equals ``embed_dim``, as in ViT-H-14 (1024 and 1024), so the UNet's context width can be that one number.
    """
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": embed_dim, "heads": 4, "layers": 3},
    }


@dataclass
class CLIPConfig:
    """Where the frozen OpenCLIP model comes from and how images are prepared.

    Attributes:
        checkpoint: Path to ``open_clip_pytorch_model.bin`` (or a ``.safetensors``) of ``arch``. Required unless
            ``tiny``; with ``tiny`` it may hold weights of the tiny architecture.
        arch: open_clip model name (official: ViT-H-14).
        tiny: Build `tiny_clip_model_config` instead of ``arch``, with seeded random weights unless
            ``checkpoint`` is given. For tests and the CPU demo; never touches the network.
        tiny_embed_dim: Embedding (and text) width of the tiny model; a multiple of 4.
        seed: Seed for the tiny random initialisation.
        image_size_px: Side of the square CLIP input (official `vit_resolution` [224, 224]).
        mean: Per-channel normalisation mean (official `vit_mean`, the OpenAI CLIP values).
        std: Per-channel normalisation std (official `vit_std`).
        batch_size: Images per vision-tower call.
    """

    checkpoint: str | None = None
    arch: str = "ViT-H-14"
    tiny: bool = False
    tiny_embed_dim: int = 64
    seed: int = 0
    image_size_px: int = 224
    mean: tuple[float, float, float] = _CLIP_MEAN
    std: tuple[float, float, float] = _CLIP_STD
    batch_size: int = 32

    def __post_init__(self) -> None:
        # The default instance (checkpoint unset) is valid so that `fit --help` can list these keys; the encoder
        # and the training system call `require_weights` when they are built.
        if self.tiny_embed_dim < 4 or self.tiny_embed_dim % 4:
            raise ValueError(f"clip.tiny_embed_dim must be a positive multiple of 4, got {self.tiny_embed_dim}")
        if self.image_size_px < 1:
            raise ValueError(f"clip.image_size_px must be >= 1, got {self.image_size_px} (official: 224)")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"clip.mean and clip.std must be 3 values with std > 0, got {self.mean}, {self.std}")
        if self.batch_size < 1:
            raise ValueError(f"clip.batch_size must be >= 1, got {self.batch_size}")

    def require_weights(self, key: str = "clip") -> None:
        """Raises ValueError unless the weights are given (``checkpoint``) or the tiny random network is asked for.

        Args:
            key: where this config sits in the user's configuration (``model.clip``, ``encoders.clip``).
        """
        if self.checkpoint is None and not self.tiny:
            raise ValueError(f"{key}.checkpoint is required unless {key}.tiny is true. {_DOWNLOAD_HINT}")


class FrozenCLIPImageEncoder(nn.Module):
    """OpenCLIP image encoder, frozen, with the official Animate-X preprocessing and empty-prompt features.

    Images give the pooled, projected embedding ``model.visual(image)`` (1024-d for ViT-H-14; no L2
    normalisation), as the official `FrozenOpenCLIPTextVisualEmbedder.encode_image`. The text tower is used once,
    for `empty_prompt_tokens`; `release_text_tower` frees it afterwards.

    Always in eval mode with ``requires_grad`` off; `train` cannot switch it back. It is never trained and never
    saved with our weights: the system must hold it outside its registered modules (``frozen = True`` marks it).

    Args:
        config: Where the weights come from and the preprocessing.

    Raises:
        FileNotFoundError: if ``config.checkpoint`` does not exist.
    """

    frozen: bool = True

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        config.require_weights()
        self.config = config
        self.model = _build_open_clip(config)
        self.model.requires_grad_(False)
        super().train(False)
        self._text_width = int(self.model.transformer.width)
        self._zero_y: torch.Tensor | None = None
        self.register_buffer("_mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> FrozenCLIPImageEncoder:
        """Keep eval mode whatever is asked (a parent's ``.train()`` must not change a frozen encoder)."""
        return super().train(False)

    @property
    def embed_dim(self) -> int:
        """Width of the pooled image embedding (1024 for ViT-H-14)."""
        return int(self.model.visual.output_dim)

    @property
    def text_width(self) -> int:
        """Width of the empty-prompt token features (1024 for ViT-H-14)."""
        return self._text_width

    def preprocess(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Official CLIP input preparation: plain bilinear resize to a square, then mean/std normalisation.

        The official pipeline is PIL ``resize((224, 224), BILINEAR)`` (no crop, aspect ratio not kept), ToTensor,
        Normalize. PIL's bilinear filter widens its support when shrinking, which ``antialias=True`` reproduces;
        for uint8 input the result is rounded to whole grey levels as PIL's uint8 output is. Measured against PIL:
        within one grey level.

        Args:
            images: uint8 (n, H, W, 3) RGB (numpy or torch), or float (n, 3, H, W) in [0, 1].

        Returns:
            Normalised images, (n, 3, S, S) float32 on the model's device, S = ``image_size_px``.

        Raises:
            ValueError: for any other shape or dtype.
        """
        images = _as_tensor(images)
        device = self._mean.device
        if images.dtype == torch.uint8:
            if images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(
                    f"uint8 images must be (n, H, W, 3) RGB, got shape {tuple(images.shape)}; add a batch axis "
                    "with images[None] for a single image"
                )
            pixels = images.to(device).permute(0, 3, 1, 2).float() / 255.0
        elif images.is_floating_point():
            if images.ndim != 4 or images.shape[1] != 3:
                raise ValueError(
                    f"float images must be (n, 3, H, W) in [0, 1], got shape {tuple(images.shape)}; add a batch "
                    "axis with images[None] for a single image"
                )
            pixels = images.to(device=device, dtype=torch.float32)
        else:
            raise ValueError(f"images must be uint8 (n, H, W, 3) or float (n, 3, H, W); got dtype {images.dtype}")
        size = self.config.image_size_px
        if tuple(pixels.shape[-2:]) != (size, size):
            pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            if images.dtype == torch.uint8:
                pixels = (pixels * 255.0).round().clamp(0.0, 255.0) / 255.0
        return (pixels - self._mean) / self._std

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Pooled CLIP image embeddings, in batches of ``batch_size``.

        Args:
            images: uint8 (n, H, W, 3) RGB (numpy or torch), or float (n, 3, H, W) in [0, 1]; any H and W.

        Returns:
            Embeddings, shape (n, embed_dim), float32, on the model's device.
        """
        images = _as_tensor(images)
        dtype = next(self.model.visual.parameters()).dtype
        chunks = [
            self.model.visual(self.preprocess(chunk).to(dtype)).float()
            for chunk in images.split(self.config.batch_size)
        ]
        return torch.cat(chunks)

    @torch.no_grad()
    def empty_prompt_tokens(self) -> torch.Tensor:
        """``zero_y``: features of the empty prompt "" at the penultimate text layer, after ``ln_final``.

        As the official `FrozenOpenCLIPTextVisualEmbedder(layer="penultimate")`: token embedding plus positions,
        every residual block but the last (causal mask), then the final LayerNorm; all 77 positions are kept.
        open_clip's ``forward_intermediates`` runs exactly that. Computed once and cached in memory.

        Returns:
            zero_y, shape (1, 77, text_width), float32 (a copy of the cache).

        Raises:
            RuntimeError: if the text tower was released before zero_y was computed or loaded.
        """
        if self._zero_y is None:
            if self.model.transformer is None:
                raise RuntimeError(
                    "the text tower was released before zero_y was computed; use set_zero_y(load_zero_y(path))"
                )
            import open_clip

            tokens = open_clip.tokenize([""], context_length=self.model.context_length).to(self._mean.device)
            last = len(self.model.transformer.resblocks) - 1
            out = self.model.forward_intermediates(
                text=tokens,
                text_indices=[last - 1],
                stop_early=True,
                normalize_intermediates=True,  # applies ln_final, as the official code does after its loop
                intermediates_only=True,
            )
            self._zero_y = out["text_intermediates"][0].float()
        return self._zero_y.clone()

    def release_text_tower(self) -> None:
        """Compute and cache zero_y, then drop the text tower (354 M params for ViT-H-14) to free memory."""
        self.empty_prompt_tokens()
        for name in ("transformer", "token_embedding", "positional_embedding", "ln_final", "text_projection"):
            setattr(self.model, name, None)

    def save_zero_y(self, path: str | Path) -> None:
        """Write zero_y (1, 77, text_width) to a safetensors file under the key ``zero_y``.

        Atomically: written to a temporary file beside ``path``, flushed to disk, then renamed over it, so a reader
        (another rank, another job) sees no file or a whole one, never a partial one.
        """
        path = Path(path)
        zero_y = self.empty_prompt_tokens().cpu().contiguous()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: concurrent writers do not collide
        try:
            save_file({"zero_y": zero_y}, str(tmp), metadata={"arch": self._arch_name(), "layer": "penultimate"})
            with open(tmp, "rb") as written:
                os.fsync(written.fileno())  # the bytes are on disk before the name points at them
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @staticmethod
    def load_zero_y(path: str | Path) -> torch.Tensor:
        """Read zero_y written by `save_zero_y`; needs no encoder, so training can skip the text tower.

        Returns:
            zero_y, shape (1, 77, width), float32, on the CPU.

        Raises:
            FileNotFoundError: if ``path`` does not exist.
            ValueError: if the file holds no ``zero_y`` of shape (1, L, width).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"zero_y file {str(path)!r} does not exist; write it with save_zero_y first")
        tensors = load_file(str(path))
        zero_y = tensors.get("zero_y")
        if zero_y is None or zero_y.ndim != 3 or zero_y.shape[0] != 1:
            shape = None if zero_y is None else tuple(zero_y.shape)
            raise ValueError(f"{str(path)!r} must hold 'zero_y' of shape (1, 77, width); got {shape}")
        return zero_y.float()

    def set_zero_y(self, zero_y: torch.Tensor) -> None:
        """Use a precomputed zero_y (e.g. from `load_zero_y`) instead of running the text tower."""
        if zero_y.ndim != 3 or zero_y.shape[0] != 1:
            raise ValueError(f"zero_y must have shape (1, 77, width), got {tuple(zero_y.shape)}")
        self._zero_y = zero_y.to(self._mean.device, torch.float32)

    def _arch_name(self) -> str:
        return f"tiny-{self.config.tiny_embed_dim}" if self.config.tiny else self.config.arch


def _as_tensor(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        return images
    # Arrays from PIL or decoders can be read-only, which torch.from_numpy does not accept silently.
    return torch.from_numpy(np.array(images, copy=not images.flags.writeable or None, order="C"))


def _build_open_clip(config: CLIPConfig) -> open_clip.CLIP:
    import open_clip

    if config.checkpoint is not None:
        path = Path(config.checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"clip.checkpoint points to {str(path)!r}, which is not a file. {_DOWNLOAD_HINT}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        if config.tiny:
            # Built directly rather than registered under a name: registering means writing into open_clip's
            # private model-config table, which would leak into every other user of open_clip in the process.
            model = open_clip.CLIP(**tiny_clip_model_config(config.tiny_embed_dim))
        else:
            # pretrained=None: random init, no network; the user's file is loaded below.
            model = open_clip.create_model(config.arch, pretrained=None)
    if config.checkpoint is not None:
        try:
            # open_clip's loader: safetensors, or torch.load(weights_only=True); it also strips 'module.' prefixes.
            open_clip.load_checkpoint(model, str(path), strict=True, weights_only=True)
        except pickle.UnpicklingError as error:  # what torch.load(weights_only=True) raises for arbitrary pickles
            raise OSError(
                f"clip.checkpoint {str(path)!r} could not be read as a weights-only checkpoint ({error}). A .bin "
                "that pickles Python objects beyond tensors is refused for safety; re-save its state_dict or use "
                "a .safetensors file."
            ) from error
    return model
