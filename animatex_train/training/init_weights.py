"""Initial weights of the denoiser: the official Animate-X or UniAnimate checkpoint, or our own export.

Checkpoints are read without executing code: safetensors, or ``torch.load(weights_only=True)``, which
refuses anything but tensors and plain containers (the official ``.pth`` files are plain state dicts).
A UniAnimate checkpoint leaves the IPI at its zero-initialised start (see ``models/official.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from animatex_train.models.official import load_official_state_dict
from animatex_train.models.unet import AnimateXDenoiser
from animatex_train.training.checkpoint_trust import load_checkpoint_file

log = logging.getLogger(__name__)
OFFICIAL_MARKERS = ("temopral_conv", "pre_image_condition.", "dwpose_embedding.")


@dataclass
class InitConfig:
    """Where the denoiser's initial weights come from.

    Attributes:
        checkpoint: path of ``animate-x.pth`` / a UniAnimate ``.pth`` (official layout) or of a
            ``.safetensors`` / Lightning ``.ckpt`` written by this project; None keeps the random init.
        strict: refuse unexpected keys and missing ones (a UniAnimate checkpoint's missing IPI keys are allowed).
    """

    checkpoint: str | None = None
    strict: bool = True


def read_state_dict(path: str | Path, config_key: str = "model.init.checkpoint") -> dict[str, torch.Tensor]:
    """Tensors of a weights file, never unpickling objects."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{config_key}: {path} does not exist; download the weights (e.g. animate-x.pth from the Hugging Face "
            f"repo Shuaishuai0219/Animate-X) and point {config_key} at the file"
        )
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        state = load_checkpoint_file(path, flag=None)  # the one policy (training/checkpoint_trust.py): weights-only
    except Exception as error:  # noqa: BLE001 - UnpicklingError and friends: refuse, with the reason
        message = f"{config_key}: {path} holds more than tensors and cannot be loaded safely ({error})"
        raise ValueError(message) from error
    if isinstance(state, dict) and "state_dict" in state:  # a Lightning checkpoint of this project
        state = {k.removeprefix("denoiser."): v for k, v in state["state_dict"].items() if k.startswith("denoiser.")}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{config_key}: {path} is not a state dict of tensors")
    return state


def is_official_layout(state: dict[str, torch.Tensor]) -> bool:
    return any(marker in key for key in state for marker in OFFICIAL_MARKERS)


def load_initial_weights(model: AnimateXDenoiser, config: InitConfig) -> None:
    """Load ``config.checkpoint`` into ``model`` (no-op without one)."""
    if config.checkpoint is None:
        return
    state = read_state_dict(config.checkpoint)
    if is_official_layout(state):
        missing, unexpected = load_official_state_dict(model, state, strict=config.strict)
    else:
        result = model.load_state_dict(state, strict=config.strict)
        missing, unexpected = result.missing_keys, result.unexpected_keys
    log.info("loaded %s (%d missing, %d unexpected keys)", config.checkpoint, len(missing), len(unexpected))
    if missing:
        log.warning(
            "keys not in %s kept their initialisation: %s%s",
            config.checkpoint,
            missing[:5],
            " ..." if len(missing) > 5 else "",
        )
