"""Loading the networks for inference: the denoiser from any of our formats or the official ``.pth``, and the
frozen VAE, CLIP and DWPose from the user's files.

Every checkpoint is read without executing code (safetensors, or ``torch.load(weights_only=True)``). Keys the
model expects but the file lacks, and keys the file has but the model does not use, are reported by name (a
missing key is an error: it would run on random weights). The keypoint encoder's position table is a fixed
sinusoid, rebuilt for any clip length, so the released 33-row table never limits the frame count.

A training run's checkpoint is read through ``training/export.py`` (verification, EMA, DeepSpeed shards); that
is the only path that imports the training stack. Exports and official files load without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from animatex_train.models.config import DenoiserConfig, tiny_denoiser_config
from animatex_train.models.embeddings import sinusoid_position_table
from animatex_train.models.official import (
    POSITION_TABLE_KEY,
    RELEASED_UNET_KWARGS,
    config_from_official,
    is_ipi_key,
    load_official_state_dict,
)
from animatex_train.models.unet import AnimateXDenoiser

log = logging.getLogger(__name__)
POSITION_TABLE = "ipi.keypoint_encoder.pos_embed.pos_table"
_OFFICIAL_MARKERS = ("temopral_conv", "pre_image_condition.", "dwpose_embedding.")


@dataclass
class LoadedDenoiser:
    """The denoiser and where it came from (for ``meta.json``).

    Attributes:
        model: the network, eval mode, float32 on the CPU.
        source: the path given (None for random tiny weights).
        kind: ``official``, ``export``, ``training`` or ``random``.
        weights: ``ema`` / ``raw`` for our checkpoints, else None.
        sha256: of the weights file (of ``state.ckpt``'s files for a DeepSpeed folder), or None.
        missing: keys of the model the file lacked (official names for an official file).
        unexpected: keys of the file the model does not have.
        config: the resolved denoiser configuration.
    """

    model: AnimateXDenoiser
    source: str | None
    kind: str
    weights: str | None
    sha256: str | None
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


def file_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's files (sorted relative names and contents)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for item in files:
        if path.is_dir():
            digest.update(str(item.relative_to(path)).encode())
        with item.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def read_model_config(path: str | Path) -> DenoiserConfig:
    """``--model_config``: ``{denoiser: {...}}`` (our keys), ``{official: {...}}`` (official constructor kwargs) or
    a parity fixture JSON (``constructor_kwargs`` + size overrides)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--model_config: {path} does not exist")
    data = yaml.safe_load(path.read_text())
    if isinstance(data, dict) and "denoiser" in data:
        return DenoiserConfig(**data["denoiser"])
    if isinstance(data, dict) and "official" in data:
        return config_from_official(data["official"])
    if isinstance(data, dict) and "constructor_kwargs" in data:
        return config_from_official(data)
    raise ValueError(
        f"--model_config: {path} must hold a 'denoiser:' mapping (our keys), an 'official:' mapping "
        "(the official UNet's constructor arguments) or a parity fixture's JSON"
    )


def _is_official(state: dict[str, torch.Tensor]) -> bool:
    return any(marker in key for key in state for marker in _OFFICIAL_MARKERS)


def _read_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(tensors, our denoiser config if the file records one) of a ``.safetensors`` or ``.pth``/``.pt`` file."""
    if path.suffix == ".safetensors":
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
        config = metadata.get("animatex.denoiser_config")
        return load_file(str(path)), (json.loads(config) if config else None)
    try:
        from animatex_train.training.checkpoint_trust import load_checkpoint_file  # torch only; lazy as export

        state = load_checkpoint_file(path, flag=None)  # the one policy (training/checkpoint_trust.py): weights-only
    except Exception as error:  # noqa: BLE001 - UnpicklingError and friends: refuse, with the reason
        raise ValueError(
            f"--checkpoint: {path} holds more than tensors and is not loaded ({error}); pass the "
            "official .pth, one of our .safetensors exports, or a training checkpoint folder"
        ) from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"--checkpoint: {path} is not a state dict of tensors")
    return state, None


def _is_training_checkpoint(path: Path) -> bool:
    """A run's checkpoints folder, a ``step-<N>`` folder or a (possibly DeepSpeed-folder) ``state.ckpt``."""
    return path.is_dir() or path.suffix == ".ckpt"


def resize_position_table(model: AnimateXDenoiser, rows: int) -> None:
    """Make the IPI position table hold at least ``rows`` positions (frames + 1); the values are a fixed sinusoid."""
    if model.ipi is None or model.ipi.keypoint_encoder is None:
        return
    pos = model.ipi.keypoint_encoder.pos_embed
    if pos.pos_table.shape[1] >= rows:
        return
    table = sinusoid_position_table(rows, pos.pos_table.shape[2]).to(pos.pos_table)
    pos.pos_table = table  # a registered buffer: assignment replaces it
    model.config.ipi.max_frames = rows


def _report(missing: list[str], unexpected: list[str], source: Path) -> None:
    if missing:
        raise ValueError(
            f"--checkpoint: {source} lacks {len(missing)} weight(s) the model needs, e.g. "
            f"{missing[:6]}; it is for another configuration (pass --model_config) "
            "or damaged"
        )
    if unexpected:
        warnings.warn(
            f"--checkpoint: {source} has {len(unexpected)} weight(s) this model does not use: "
            f"{unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}",
            stacklevel=3,
        )


def load_denoiser(
    checkpoint: str | None,
    weights: str = "ema",
    model_config: str | None = None,
    tiny: bool = False,
    trust: bool = False,
) -> LoadedDenoiser:
    """Build the denoiser and load its weights (see ``WeightsSettings.checkpoint`` for the accepted files).

    The keypoint rows are always paired per sample: at batch 1 (the released inference) this is the official
    function bit for bit, and it lets the guidance branches or windows share a batch.
    """
    explicit = read_model_config(model_config) if model_config else None
    if checkpoint is None:
        if not tiny:
            raise ValueError("--checkpoint is required (or --tiny for random weights)")
        config = explicit or tiny_denoiser_config()
        return _finish(config, None, "random", None, None, [], [], Path("<random>"))
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"--checkpoint: {path} does not exist")
    if _is_training_checkpoint(path):
        from animatex_train.training.export import ExportError, read_denoiser_weights, resolve_checkpoint

        try:
            state_file = resolve_checkpoint(path)
            read = read_denoiser_weights(state_file, weights, trust)
        except ExportError as error:
            raise ValueError(f"--checkpoint: {error}") from error
        recorded = json.loads(read.metadata.get("animatex.denoiser_config", "{}") or "{}")
        config = explicit or (DenoiserConfig(**recorded) if recorded else None)
        if config is None:
            raise ValueError(f"--checkpoint: {state_file} records no denoiser configuration; pass --model_config")
        return _load_native(config, read.state, path, "training", weights, file_sha256(state_file))
    state, recorded = _read_file(path)
    digest = file_sha256(path)
    if _is_official(state):
        config = explicit or config_from_official(RELEASED_UNET_KWARGS)
        model = _build(config)
        missing, unexpected = load_official_state_dict(model, state, strict=False)
        has_ipi = any(is_ipi_key(k) for k in state)
        tolerated = [k for k in missing if k == POSITION_TABLE_KEY or (not has_ipi and is_ipi_key(k))]
        if len(tolerated) > 1:
            warnings.warn(
                f"--checkpoint: {path} has no IPI weights (a UniAnimate checkpoint?): the pose attention "
                "keeps its zero-initialised output, so the IPI has no effect",
                stacklevel=2,
            )
        _report([k for k in missing if k not in tolerated], unexpected, path)
        return _finish(model.config, model, "official", None, digest, missing, unexpected, path)
    config = explicit or (DenoiserConfig(**recorded) if recorded else None)
    if config is None:
        raise ValueError(
            f"--checkpoint: {path} records no denoiser configuration (not one of our exports); pass --model_config"
        )
    return _load_native(config, state, path, "export", None, digest)


def _build(config: DenoiserConfig) -> AnimateXDenoiser:
    config.ipi.keypoint_row_order = "per_sample"
    return AnimateXDenoiser(config).eval()


def _load_native(
    config: DenoiserConfig,
    state: dict[str, torch.Tensor],
    path: Path,
    kind: str,
    weights: str | None,
    digest: str | None,
) -> LoadedDenoiser:
    model = _build(config)
    state = dict(state)
    own = model.state_dict()
    table = state.get(POSITION_TABLE)
    if table is not None and POSITION_TABLE in own and table.shape != own[POSITION_TABLE].shape:
        state.pop(POSITION_TABLE)  # another max_frames: the table is a fixed sinusoid, kept from the build
    shapes = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    if shapes:
        key = shapes[0]
        raise ValueError(
            f"--checkpoint: {path}: {key} has shape {tuple(state[key].shape)}, the model expects "
            f"{tuple(own[key].shape)}; pass the --model_config it was trained with"
        )
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k != POSITION_TABLE]
    _report(missing, list(result.unexpected_keys), path)
    return _finish(config, model, kind, weights, digest, missing, list(result.unexpected_keys), path)


def _finish(
    config: DenoiserConfig,
    model: AnimateXDenoiser | None,
    kind: str,
    weights: str | None,
    digest: str | None,
    missing: list[str],
    unexpected: list[str],
    path: Path,
) -> LoadedDenoiser:
    if model is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = _build(config)
    log.info("denoiser: %s (%s), %d parameters", path, kind, sum(p.numel() for p in model.parameters()))
    return LoadedDenoiser(
        model=model.eval(),
        source=None if kind == "random" else str(path),
        kind=kind,
        weights=weights,
        sha256=digest,
        missing=missing,
        unexpected=unexpected,
        config=asdict(model.config),
    )
