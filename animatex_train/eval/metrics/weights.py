"""Where each metric network's weights come from: an explicit path, else the torch hub cache the upstream package
reads; a missing file is an error that names the file, its original URL and the flag that points at it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class WeightFile:
    """One pretrained file a metric needs (docs/evaluation.md).

    Attributes:
        key: the ``--weights.<key>`` flag (and ``weights:`` recipe key) that points at it.
        filename: the name the upstream package caches it under in ``<torch hub>/checkpoints/``.
        url: where a user with internet gets it.
        metric: what it is used for (for the error message).
    """

    key: str
    filename: str
    url: str
    metric: str


WEIGHT_FILES: dict[str, WeightFile] = {
    "fid_inception": WeightFile(
        "fid_inception",
        "pt_inception-2015-12-05-6726825d.pth",
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
        "FID (pytorch-fid's FID-InceptionV3)",
    ),
    "vgg16": WeightFile(
        "vgg16",
        "vgg16-397923af.pth",
        "https://download.pytorch.org/models/vgg16-397923af.pth",
        "LPIPS (VGG16 trunk; the linear heads ship inside the lpips wheel)",
    ),
    "i3d": WeightFile(
        "i3d",
        "i3d_pretrained_400.pt",
        "https://github.com/songweige/TATS/raw/main/tats/fvd/i3d_pretrained_400.pt",
        "FVD (Inception-I3D, Kinetics-400)",
    ),
    "r3d50": WeightFile(
        "r3d50",
        "resnet-50-kinetics.pth",
        "https://github.com/yjh0410/YOWOF/releases/download/yowof-weight/resnet-50-kinetics.pth",
        "FID-VID (3D ResNet-50, Kinetics-400)",
    ),
}


def hub_checkpoint_dir() -> Path:
    """``<torch.hub.get_dir()>/checkpoints``: where torchvision and pytorch-fid cache downloads."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_weight(key: str, explicit: str | Path | None) -> Path:
    """The file for ``key`` (``fid_inception``, ``vgg16``, ``i3d`` or ``r3d50``).

    Args:
        key: which network.
        explicit: a path given with ``--weights.<key>``; None looks in the torch hub cache.

    Raises:
        FileNotFoundError: naming the file, its URL and the flag.
    """
    spec = WEIGHT_FILES[key]
    candidate = Path(explicit).expanduser() if explicit else hub_checkpoint_dir() / spec.filename
    if candidate.is_file():
        return candidate
    where = f"--weights.{key} {candidate} does not exist" if explicit else f"{candidate} is not in the torch hub cache"
    raise FileNotFoundError(
        f"{spec.metric} needs {spec.filename}: {where}. Download it from {spec.url} (nothing is downloaded here) and "
        f"pass --weights.{key} /path/to/{spec.filename}, or put it in {hub_checkpoint_dir()}/ (TORCH_HOME)."
    )


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (recorded in ``metrics.json`` so a number can be traced to its weights)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict read without executing code (``weights_only=True``); unwraps ``{'state_dict': ...}`` and strips
    DataParallel's ``module.`` prefixes, as the kenshohara 3D-ResNet files need (DisCo features.py does the same)."""
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict (a mapping of tensors), got {type(state).__name__}")
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}


def state_dict_content_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over ``key|dtype|shape|bytes`` of each entry in order: identifies weights independently of the file
    format (the reference fixtures give this hash for their random networks)."""
    digest = hashlib.sha256()
    for key, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(
            key.encode()
            + b"|"
            + str(tensor.dtype).encode()
            + b"|"
            + str(tuple(tensor.shape)).encode()
            + b"|"
            + tensor.numpy().tobytes()
        )
    return digest.hexdigest()
