"""Checkpoints that cannot be half-written, and resume from the newest complete one.

Commit protocol (docs/reliability.md §4), run by every rank together:

1. rank 0 creates ``step-<N>.tmp/``; barrier;
2. every rank writes its part through Lightning (``state.ckpt``: one file under DDP, a directory of
   per-rank shards under DeepSpeed, where rank-0-only saving deadlocks); every rank fsyncs; barrier;
3. rank 0 writes ``MANIFEST.json`` (every file with its size and sha256), then ``COMPLETE`` last,
   fsyncs, renames ``step-<N>.tmp`` -> ``step-<N>`` atomically, updates ``latest`` atomically and only
   then deletes checkpoints beyond the newest ``keep_last``; barrier.

A directory without ``COMPLETE``, or whose files do not match its manifest (missing, truncated,
flipped bytes), is never resumed from: ``find_resume_checkpoint`` skips it with a warning naming it
and the failed check, before a single tensor is loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Checkpoint

from animatex_train.training.checkpoint_storage import (
    SAVE_ERROR_POLICIES,
    CheckpointSaveError,
    attempt_write,
    checkpoint_bytes,
    failure_message,
    remove_partial,
    warn_if_short,
)

log = logging.getLogger(__name__)

STATE = "state.ckpt"
MANIFEST = "MANIFEST.json"
COMPLETE = "COMPLETE"
LATEST = "latest"
_STEP_DIR = re.compile(r"^step-(\d{9})$")
_TMP_DIR = re.compile(r"^step-(\d{9})\.tmp$")
_FORMAT_VERSION = 1


class CheckpointIntegrityError(RuntimeError):
    """A checkpoint that failed a check (the message names the directory, the file and the check)."""


def step_dir_name(step: int) -> str:
    return f"step-{step:09d}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, fsync, then an atomic rename."""
    tmp = path.with_name(path.name + ".partial")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` and the directories themselves to stable storage."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            _fsync_file(Path(dirpath) / name)
        _fsync_dir(Path(dirpath))


def commit_checkpoint(tmp_dir: Path, final_dir: Path, step: int, keep_last: int) -> None:
    """Step 3 of the protocol (rank 0): manifest, completion marker, atomic rename, ``latest``, retention."""
    files = {
        str(p.relative_to(tmp_dir)): {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(tmp_dir.rglob("*"))
        if p.is_file()
    }
    manifest = json.dumps({"version": _FORMAT_VERSION, "step": step, "files": files}, indent=1, sort_keys=True)
    _write_durably(tmp_dir / MANIFEST, manifest)
    _write_durably(tmp_dir / COMPLETE, hashlib.sha256(manifest.encode()).hexdigest() + "\n")
    if final_dir.exists():  # a leftover of the same step (e.g. a crash right after the rename): replace it
        shutil.rmtree(final_dir)
    os.rename(tmp_dir, final_dir)
    _fsync_dir(final_dir.parent)
    _write_durably(final_dir.parent / LATEST, final_dir.name + "\n")
    apply_retention(final_dir.parent, keep_last)


def apply_retention(root: Path, keep_last: int) -> None:
    """Delete complete checkpoints beyond the newest ``keep_last`` and stale temporary ones."""
    complete = sorted((p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / COMPLETE).exists()), reverse=True)
    newest = int(_STEP_DIR.match(complete[0].name).group(1)) if complete else -1
    for old in complete[keep_last:]:
        shutil.rmtree(old, ignore_errors=True)
    for tmp in root.iterdir():
        match = _TMP_DIR.match(tmp.name)
        if match and int(match.group(1)) <= newest:
            shutil.rmtree(tmp, ignore_errors=True)


def verify_checkpoint(step_dir: Path, check_hashes: bool = True) -> None:
    """Raise ``CheckpointIntegrityError`` unless ``step_dir`` is a complete, intact checkpoint."""
    if not (step_dir / COMPLETE).is_file():
        raise CheckpointIntegrityError(f"{step_dir}: no {COMPLETE} marker (the save was interrupted)")
    try:
        manifest_text = (step_dir / MANIFEST).read_text()
        manifest = json.loads(manifest_text)
    except (OSError, ValueError) as error:
        raise CheckpointIntegrityError(f"{step_dir}: {MANIFEST} is missing or unreadable ({error})") from error
    marker = (step_dir / COMPLETE).read_text().strip()
    if marker != hashlib.sha256(manifest_text.encode()).hexdigest():
        raise CheckpointIntegrityError(f"{step_dir}: {COMPLETE} does not match {MANIFEST} (manifest hash mismatch)")
    for name, expected in manifest["files"].items():
        path = step_dir / name
        if not path.is_file():
            raise CheckpointIntegrityError(f"{step_dir}: file {name} listed in {MANIFEST} is missing")
        size = path.stat().st_size
        if size != expected["size"]:
            raise CheckpointIntegrityError(
                f"{step_dir}: file {name} has {size} bytes, {MANIFEST} says {expected['size']}"
            )
        if check_hashes and _sha256(path) != expected["sha256"]:
            raise CheckpointIntegrityError(f"{step_dir}: file {name} fails its sha256 check (corrupted)")


def find_resume_checkpoint(root: str | Path, check_hashes: bool = True) -> Path | None:
    """The newest complete, intact checkpoint's ``state.ckpt`` under ``root``, or None.

    Incomplete or damaged ones are skipped with a warning naming the directory and the failed check.
    """
    root = Path(root)
    if not root.is_dir():
        return None
    steps = sorted((p for p in root.iterdir() if _STEP_DIR.match(p.name)), reverse=True)
    for tmp in sorted(p for p in root.iterdir() if _TMP_DIR.match(p.name)):
        log.warning("ignoring incomplete checkpoint %s (its save was interrupted)", tmp)
    for step_dir in steps:
        try:
            verify_checkpoint(step_dir, check_hashes)
        except CheckpointIntegrityError as error:
            log.warning("not resuming from %s: %s", step_dir, error)
            continue
        return step_dir / STATE
    return None


def resolve_checkpoint(path: str | Path, check_hashes: bool = True, key: str = "--ckpt_path") -> Path:
    """The verified ``state.ckpt`` behind ``path``: a run's checkpoints folder (its newest complete checkpoint),
    a ``step-<N>`` folder or its ``state.ckpt``. Anything else (a Lightning ``.ckpt`` of another project, a
    bare DeepSpeed folder) is returned as given: it has no manifest to verify, and is read weights-only anyway.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointIntegrityError: a checkpoint of ours fails ``verify_checkpoint`` (names the check), or a
            checkpoints folder holds no complete one.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{key}: {path} does not exist; pass a run's checkpoints/ folder, a step-<N> folder or its {STATE}"
        )
    if path.name == STATE:
        step_dir = path.parent
    elif (path / STATE).exists():
        step_dir = path
    elif path.is_dir() and any(_STEP_DIR.match(p.name) or _TMP_DIR.match(p.name) for p in path.iterdir()):
        newest = find_resume_checkpoint(path, check_hashes)
        if newest is None:
            raise CheckpointIntegrityError(
                f"{key}: {path} holds no complete, intact checkpoint (step-<N>/ with {STATE}); the log above names "
                "any that were skipped and why"
            )
        step_dir = newest.parent
    else:
        return path
    verify_checkpoint(step_dir, check_hashes)
    return step_dir / STATE


def _make_tmp(root: Path, tmp: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()


class CrashSafeCheckpoint(Checkpoint):
    """Save every ``every_n_steps`` optimizer steps (and at the end) with the commit protocol above.

    Args:
        dirpath: where checkpoints go; defaults to ``<trainer.default_root_dir>/checkpoints``.
        every_n_steps: optimizer steps between checkpoints (0: only at the end and on request).
        keep_last: complete checkpoints to keep (at least 2, so a damaged newest one has a fallback).
        save_on_train_end: also save when training ends.
        verify_hashes_on_resume: check sha256 of every file before resuming (sizes are always checked).
        on_save_error: a save that fails on any rank (disk full, I/O error) is aborted on every rank, then
            ``stop`` ends the run with an error naming path, bytes needed and bytes free, ``continue`` warns
            and trains on (the next save tries again). The previous checkpoint is intact either way.
        free_space_margin: warn before (and after) a save when the checkpoint folder has less free space than
            the last checkpoint's size times this factor.
    """

    def __init__(
        self,
        dirpath: str | None = None,
        every_n_steps: int = 1000,
        keep_last: int = 2,
        save_on_train_end: bool = True,
        verify_hashes_on_resume: bool = True,
        on_save_error: Literal["stop", "continue"] = "stop",
        free_space_margin: float = 1.5,
    ):
        if keep_last < 2:
            raise ValueError(
                f"CrashSafeCheckpoint.keep_last must be >= 2 (a fallback if the newest is damaged), got {keep_last}"
            )
        if every_n_steps < 0:
            raise ValueError(f"CrashSafeCheckpoint.every_n_steps must be >= 0, got {every_n_steps}")
        if on_save_error not in SAVE_ERROR_POLICIES:
            raise ValueError(f"checkpoint.on_save_error must be one of {SAVE_ERROR_POLICIES}, got {on_save_error!r}")
        if free_space_margin < 1:
            raise ValueError(
                f"checkpoint.free_space_margin must be >= 1 (a factor on the last checkpoint's size), "
                f"got {free_space_margin}"
            )
        self.on_save_error = on_save_error
        self.free_space_margin = free_space_margin
        self._failed_ranks: list[int] = []
        self.dirpath = dirpath
        self.every_n_steps = every_n_steps
        self.keep_last = keep_last
        self.save_on_train_end = save_on_train_end
        self.verify_hashes_on_resume = verify_hashes_on_resume
        self.save_requested = False  # set by e.g. the preemption handler; honoured at the next step boundary
        self.last_saved_step = -1

    def directory(self, trainer: pl.Trainer) -> Path:
        return Path(self.dirpath or Path(trainer.default_root_dir) / "checkpoints")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx):
        step = trainer.global_step
        due = self.every_n_steps and step > 0 and step % self.every_n_steps == 0
        if (due or self.save_requested) and step != self.last_saved_step and not trainer.sanity_checking:
            self.save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_on_train_end and trainer.global_step != self.last_saved_step:
            self.save(trainer)

    def save(self, trainer: pl.Trainer) -> Path | None:
        """Run the commit protocol on every rank; returns the committed directory (None: aborted, policy continue).

        A write error on any rank aborts the save on every rank (``checkpoint_storage.py``).
        """
        step = trainer.global_step
        root = self.directory(trainer)
        tmp, final = root / (step_dir_name(step) + ".tmp"), root / step_dir_name(step)
        strategy = trainer.strategy
        previous = find_resume_checkpoint(root, check_hashes=False) if trainer.is_global_zero else None
        last_bytes = checkpoint_bytes(previous.parent) if previous is not None else 0
        existed = final.exists()
        error: BaseException | None = None
        if trainer.is_global_zero:
            warn_if_short(root, last_bytes, self.free_space_margin, f"before the checkpoint save at step {step}")
            error = attempt_write(lambda: _make_tmp(root, tmp))
        strategy.barrier("checkpoint:tmp")
        if error is None:
            error = attempt_write(lambda: trainer.save_checkpoint(tmp / STATE, weights_only=False))
            if error is not None:  # it left before Trainer.save_checkpoint's closing barrier: keep collectives paired
                strategy.barrier("Trainer.save_checkpoint")
        strategy.barrier("checkpoint:written")
        if error is None:
            error = attempt_write(lambda: fsync_tree(tmp))
        if self._failed_anywhere(trainer, error):
            return self._abort(trainer, step, tmp, final, existed, error, last_bytes, previous)
        if trainer.is_global_zero:
            error = attempt_write(lambda: commit_checkpoint(tmp, final, step, self.keep_last))
            if error is None:
                log.info("checkpoint committed: %s", final)
                warn_if_short(
                    root,
                    checkpoint_bytes(final),
                    self.free_space_margin,
                    f"after the checkpoint save at step {step} (for the next one)",
                )
        if self._failed_anywhere(trainer, error):
            return self._abort(trainer, step, tmp, final, existed, error, last_bytes, previous)
        strategy.barrier("checkpoint:committed")
        self.last_saved_step = step
        self.save_requested = False
        return final

    def _failed_anywhere(self, trainer: pl.Trainer, error: BaseException | None) -> bool:
        """One collective: did the save fail on some rank? (every rank gets the same answer)."""
        self._failed_ranks = [trainer.global_rank] if error is not None else []
        if trainer.world_size == 1:
            return error is not None
        flags = torch.zeros(trainer.world_size, dtype=torch.int32, device=trainer.strategy.root_device)
        flags[trainer.global_rank] = int(error is not None)
        flags = trainer.strategy.reduce(flags, reduce_op="sum")
        self._failed_ranks = [rank for rank, flag in enumerate(flags.tolist()) if flag]
        return bool(self._failed_ranks)

    def _abort(
        self,
        trainer: pl.Trainer,
        step: int,
        tmp: Path,
        final: Path,
        existed: bool,
        error: BaseException | None,
        last_bytes: int,
        previous: Path | None,
    ) -> None:
        message = None
        if trainer.is_global_zero:
            message = failure_message(
                step,
                tmp,
                error,
                self._failed_ranks,
                last_bytes,
                self.free_space_margin,
                previous.parent if previous is not None else None,
            )
            remove_partial(tmp, final, existed)
        message = trainer.strategy.broadcast(message, src=0)  # every rank reports and acts on the same text
        trainer.strategy.barrier("checkpoint:aborted")
        self.save_requested = False
        if self.on_save_error == "stop":
            raise CheckpointSaveError(message)
        log.warning(
            "rank %d: %s; training goes on (checkpoint.on_save_error: continue), the next save tries again",
            trainer.global_rank,
            message,
        )
        return None

    def state_dict(self) -> dict:
        return {"last_saved_step": self.last_saved_step}

    def load_state_dict(self, state_dict: dict) -> None:
        self.last_saved_step = int(state_dict.get("last_saved_step", -1))
