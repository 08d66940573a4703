"""``animatex-train export``: a checkpoint of ours -> the denoiser's weights, as safetensors (+ official ``.pth``).

Accepted inputs: a run's ``checkpoints/`` folder (its newest complete checkpoint), a ``step-<N>`` folder,
or its ``state.ckpt`` (one file under DDP/FSDP-full/single device, a folder of per-rank shards under
DeepSpeed ZeRO). The checkpoint is verified first (``verify_checkpoint``: completion marker, manifest,
sizes, sha256), then read without executing code:

the project's one loading policy (``training/checkpoint_trust.py``): a single-file ``state.ckpt`` and a
DeepSpeed folder (through DeepSpeed's own ``zero_to_fp32`` reconstruction) are read with PyTorch's
restricted unpickler plus an allowlist of DeepSpeed's plain state holders. ``--trust_checkpoint`` lifts
the restriction, for your own run directories only.

The output holds the denoiser's state dict under our key names (buffers included), EMA weights from the
EMA callback's state or the raw weights, in float32 or bfloat16; its metadata records where it came from.
``--official`` also writes the official ``animate-x.pth`` layout (a plain dict of tensors, ``torch.save``),
which the official inference code and ``model.init.checkpoint`` both load.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from animatex_train.models.official import to_official_state_dict
from animatex_train.training.checkpoint import LATEST, STATE, CheckpointIntegrityError
from animatex_train.training.checkpoint import resolve_checkpoint as resolve_verified
from animatex_train.training.checkpoint_trust import CheckpointRefusedError, restricted_loading

log = logging.getLogger(__name__)
PREFIX = "denoiser."  # the LightningModule attribute holding the denoiser
EMA_STATE_KEY = "EMA"  # Lightning's state key of the EMA callback (its class name)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class ExportError(RuntimeError):
    """The checkpoint cannot be exported as asked; the message says why and what to do."""


@dataclass
class DenoiserWeights:
    """What ``read_denoiser_weights`` returns.

    Attributes:
        state: the denoiser's state dict (our key names, buffers included), float32.
        step: the optimizer step the checkpoint was taken at.
        weights: ``ema`` or ``raw``.
        source: the ``state.ckpt`` it was read from.
        metadata: provenance for the safetensors header (strings only).
    """

    state: dict[str, torch.Tensor]
    step: int
    weights: str
    source: Path
    metadata: dict[str, str] = field(default_factory=dict)


def resolve_checkpoint(path: str | Path, check_hashes: bool = True) -> Path:
    """The verified ``state.ckpt`` behind ``path`` (a checkpoints folder, a ``step-<N>`` folder or a ``state.ckpt``).

    Raises:
        ExportError: nothing exportable there, or the checkpoint fails verification (names the check).
    """
    try:
        state = resolve_verified(path, check_hashes, key="export")
    except FileNotFoundError as error:
        raise ExportError(str(error)) from error
    except CheckpointIntegrityError as error:
        raise ExportError(
            f"refusing to export: {error}. Export an older step-<N> folder of the same run instead"
        ) from error
    if state.name != STATE:
        raise ExportError(
            f"{path} holds no complete, intact checkpoint (step-<N>/ with {STATE}); the log above names any "
            "that were skipped and why"
        )
    return state


@contextlib.contextmanager
def _policy(source: Path, trust: bool):
    """``checkpoint_trust``'s policy, its refusal reported as an ``ExportError``."""
    try:
        with restricted_loading(source, trust, flag="--trust_checkpoint"):
            yield
    except CheckpointRefusedError as error:
        raise ExportError(str(error)) from error


def _load(path: Path, trust: bool) -> dict:
    with _policy(path, trust):
        return torch.load(path, map_location="cpu")


def _deepspeed_tag(state: Path) -> str:
    latest = state / LATEST
    tag = latest.read_text().strip() if latest.is_file() else ""
    if not tag or not (state / tag).is_dir():
        raise ExportError(f"{state}: no DeepSpeed '{LATEST}' file naming a tag folder; is this a ZeRO checkpoint?")
    return tag


def _read_deepspeed(state: Path, trust: bool) -> tuple[dict, dict[str, torch.Tensor]]:
    """(client state of rank 0, fp32 master weights of the whole module) of a ZeRO checkpoint folder."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    tag = _deepspeed_tag(state)
    # rank 0's model states (with Lightning's client state): ZeRO-1/2 name it mp_rank_00_*, ZeRO-3 zero_pp_rank_0_*
    names = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")
    model_states = next((state / tag / n for n in names if (state / tag / n).is_file()), None)
    if model_states is None:
        raise ExportError(f"{state / tag}: none of {names}; the DeepSpeed checkpoint is incomplete")
    client = _load(model_states, trust)
    # DeepSpeed's zero_to_fp32 assembles the fp32 master weights from the ZeRO-1/2/3 optimizer partitions; the
    # policy restricts the torch.load it calls.
    with _policy(state, trust), contextlib.redirect_stdout(sys.stderr):  # it prints progress to stdout
        module_state = get_fp32_state_dict_from_zero_checkpoint(str(state), tag=tag)
    return client, module_state


def read_denoiser_weights(state: str | Path, weights: str = "ema", trust: bool = False) -> DenoiserWeights:
    """The denoiser's float32 weights from a verified ``state.ckpt`` (file or DeepSpeed folder).

    Args:
        state: the ``state.ckpt`` (see ``resolve_checkpoint``).
        weights: ``ema`` (the EMA callback's shadow weights; buffers from the raw state) or ``raw``.
        trust: allow unrestricted unpickling (your own run directories only).
    """
    if weights not in ("ema", "raw"):
        raise ExportError(f"weights must be ema or raw, got {weights!r}")
    state = Path(state)
    if state.is_dir():
        checkpoint, module_state = _read_deepspeed(state, trust)
    else:
        checkpoint = _load(state, trust)
        module_state = checkpoint.get("state_dict")
        if module_state is None:
            raise ExportError(f"{state} has no 'state_dict'; it is not a Lightning checkpoint of this project")
    raw = {
        k[len(PREFIX) :]: v.float() if v.is_floating_point() else v
        for k, v in module_state.items()
        if k.startswith(PREFIX)
    }
    if not raw:
        raise ExportError(f"{state} holds no '{PREFIX}*' weights; it is not a checkpoint of AnimateXSystem")
    config = (checkpoint.get("hyper_parameters") or {}).get("config") or {}
    metadata = {
        "animatex.source_checkpoint": str(state.resolve()),
        "animatex.step": str(int(checkpoint.get("global_step", -1))),
        "animatex.weights": weights,
        "animatex.layout": "native",
        "animatex.denoiser_config": json.dumps(config.get("denoiser", {}), sort_keys=True),
    }
    if weights == "ema":
        ema = (checkpoint.get("callbacks") or {}).get(EMA_STATE_KEY)
        if not ema or not ema.get("shadow"):
            raise ExportError(
                f"{state} has no EMA weights (model.ema.enabled was false, or the EMA never started); export with "
                "--weights raw"
            )
        unknown = sorted(set(ema["shadow"]) - set(raw))
        if unknown:
            raise ExportError(
                f"{state}: EMA weights {unknown[:3]} are not denoiser parameters (an EMA "
                "kept under FSDP, or a damaged checkpoint); export with --weights raw"
            )
        reshaped = sorted(k for k, v in ema["shadow"].items() if v.shape != raw[k].shape)
        if reshaped:
            raise ExportError(
                f"{state}: EMA weight {reshaped[0]!r} has shape {tuple(ema['shadow'][reshaped[0]].shape)} but the "
                f"weight {tuple(raw[reshaped[0]].shape)} ({len(reshaped)} such); an EMA of sharded (FSDP) parameters "
                "cannot be exported: use --weights raw"
            )
        raw.update({k: v.float() for k, v in ema["shadow"].items()})
        metadata["animatex.ema_decay"] = str(config.get("ema", {}).get("decay", ""))
        metadata["animatex.ema_num_updates"] = str(int(ema.get("num_updates", 0)))
    return DenoiserWeights(raw, int(metadata["animatex.step"]), weights, state, metadata)


def official_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our denoiser state dict in the official ``animate-x.pth`` layout: a plain dict of standalone tensors."""
    return {k: v.clone() for k, v in to_official_state_dict(state).items()}


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    write(tmp)
    os.replace(tmp, path)


def export_weights(
    checkpoint: str | Path,
    output: str | Path,
    weights: str = "ema",
    dtype: str = "fp32",
    official: str | Path | None = None,
    trust: bool = False,
    check_hashes: bool = True,
) -> DenoiserWeights:
    """Verify ``checkpoint``, then write the denoiser's weights to ``output`` (and ``official``). See the module doc."""
    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    result = read_denoiser_weights(resolve_checkpoint(checkpoint, check_hashes), weights, trust)
    target = DTYPES[dtype]
    tensors = {k: (v.to(target) if v.is_floating_point() else v).contiguous() for k, v in result.state.items()}
    metadata = {"format": "pt", "animatex.dtype": dtype, **result.metadata}
    _atomic(Path(output), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    if official is not None:
        official_state = official_layout(tensors)
        _atomic(Path(official), lambda tmp: torch.save(official_state, tmp))
    return result
