"""Identities of what produced a dataset (weights files, encoder settings), for the manifest and resume checks."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path
from typing import Any


def file_identity(path: str | Path) -> str:
    """``<name>:<bytes>:sha256=<hex>`` of a weights file, or of every file under a folder (sorted by path)."""
    path = Path(path).expanduser()
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    size = 0
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode())
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
                size += len(chunk)
    return f"{path.name}:{size}:sha256={digest.hexdigest()}"


def config_identity(config: Any) -> str:
    """``ClassName(key=value, ...) <weights>`` of an encoder config with a ``checkpoint`` and a ``seed`` field."""
    settings = {k: v for k, v in asdict(config).items() if k != "checkpoint"}
    weights = file_identity(config.checkpoint) if config.checkpoint else f"random(seed={config.seed})"
    return f"{type(config).__name__}({', '.join(f'{k}={v}' for k, v in sorted(settings.items()))}) {weights}"


def pose_identity(method: str, det_model: str | None, pose_model: str | None, keep_face: bool) -> str:
    """What makes the keypoints; DWPose model files are hashed."""
    if method == "dwpose" and det_model and pose_model:
        return f"dwpose(keep_face={keep_face}) {file_identity(det_model)} {file_identity(pose_model)}"
    return f"{method}(keep_face={keep_face})"
