"""Checkpoints whose pickle would create a canary file: the payload of the no-code-execution tests (F20)."""

from __future__ import annotations

from pathlib import Path

import torch

from animatex_train.training.checkpoint import STATE, commit_checkpoint, step_dir_name


class Canary:
    """Unpickling this calls ``open(path, "w")``: the file appears iff the payload ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def evil_checkpoint(path: Path, canary: Path) -> Path:
    """A Lightning-looking checkpoint at ``path`` carrying the payload."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"denoiser.w": torch.zeros(2)}, "global_step": 2, "payload": Canary(canary)}, path)
    return path


def planted_step(root: Path, canary: Path, step: int = 2) -> Path:
    """A malicious checkpoint that passes the commit protocol's checks (a manifest and hashes are easy to forge)."""
    tmp = root / (step_dir_name(step) + ".tmp")
    evil_checkpoint(tmp / STATE, canary)
    commit_checkpoint(tmp, root / step_dir_name(step), step, keep_last=2)
    return root / step_dir_name(step)
