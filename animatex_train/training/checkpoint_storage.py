"""Storage faults during a checkpoint save: a free-space check before it, a clean abort on any write error.

A save that fails (``ENOSPC``, ``EIO``, a quota, a vanished mount) on any rank is aborted on every rank: the
ranks agree through one collective that some rank failed, the half-written ``step-<N>.tmp`` is removed, no
``step-<N>`` is committed and the previous complete checkpoint is left as it was. Then every rank takes the
same action, chosen by ``checkpoint.on_save_error``: ``stop`` (raise ``CheckpointSaveError``, one ``error:``
line from the CLI) or ``continue`` (warn and train on; the next save tries again). The message names the
path, the bytes a checkpoint needs (the last one's size times the margin) and the bytes free there.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)
SAVE_ERROR_POLICIES = ("stop", "continue")


class CheckpointSaveError(OSError):
    """A checkpoint could not be written; the message says where, how much space it needs and what is intact."""


def is_write_error(error: BaseException) -> bool:
    """An error of writing a file (as opposed to a failed collective or a bug).

    ``OSError`` from Python writers (Lightning serialises in memory, then writes through fsspec); PyTorch's
    own zip writer (``torch.save`` to a path, as DeepSpeed saves) reports a failed write as a ``RuntimeError``.
    """
    if isinstance(error, OSError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("write failed" in text or "No space left" in text)


def attempt_write(action: Callable[[], object]) -> BaseException | None:
    """Run ``action``; its write error (see ``is_write_error``) is returned, anything else propagates."""
    try:
        action()
    except Exception as caught:  # noqa: BLE001 - sorted right below
        if not is_write_error(caught):
            raise
        return caught
    return None


def checkpoint_bytes(step_dir: Path) -> int:
    """Total size of a committed checkpoint, from its manifest (0 if it has none)."""
    try:
        manifest = json.loads((step_dir / "MANIFEST.json").read_text())
    except (OSError, ValueError):
        return 0
    return sum(int(entry["size"]) for entry in manifest.get("files", {}).values())


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.is_dir() else 0


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem holding ``path`` (its nearest existing ancestor)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def space_shortfall(root: Path, last_bytes: int, margin: float) -> tuple[int, int] | None:
    """(bytes needed, bytes free) when ``root`` has less than ``last_bytes * margin`` free, else None.

    Without a previous checkpoint (``last_bytes == 0``) nothing is known and nothing is reported.
    """
    if last_bytes <= 0:
        return None
    needed, free = int(last_bytes * margin), free_bytes(root)
    return (needed, free) if free < needed else None


def warn_if_short(root: Path, last_bytes: int, margin: float, when: str) -> None:
    short = space_shortfall(root, last_bytes, margin)
    if short is not None:
        log.warning(
            "%s: %s has %d bytes free, a checkpoint needs about %d (the last one's %d bytes x "
            "checkpoint.free_space_margin %.2f); free space or the save may fail",
            when,
            root,
            short[1],
            short[0],
            last_bytes,
            margin,
        )


def remove_partial(tmp: Path, final: Path, existed_before: bool) -> None:
    """Undo a failed save (rank 0): the temporary folder, and a ``step-<N>`` this very save had renamed into place."""
    shutil.rmtree(tmp, ignore_errors=True)
    if final.exists() and not existed_before:
        shutil.rmtree(final, ignore_errors=True)


def failure_message(
    step: int,
    tmp: Path,
    error: BaseException | None,
    failed_ranks: list[int],
    last_bytes: int,
    margin: float,
    previous: Path | None,
) -> str:
    """``what, where, how to fix`` of an aborted save (built on rank 0, broadcast so every rank says the same)."""
    needed = int(last_bytes * margin) if last_bytes else tree_bytes(tmp)
    need_text = f"about {needed:,} bytes" if last_bytes else f"more than the {needed:,} bytes written before it failed"
    cause = f"{type(error).__name__}: {error}" if error is not None else "a write error on another rank"
    kept = f"the previous checkpoint {previous} is intact" if previous is not None else "no earlier checkpoint exists"
    return (
        f"checkpoint save at step {step} failed on rank(s) {failed_ranks} ({cause}) writing {tmp}; a checkpoint "
        f"needs {need_text}, {free_bytes(tmp.parent):,} bytes are free there; nothing was committed and {kept}. "
        "Free space (or move checkpoint.dirpath) and rerun to resume"
    )
