"""Experiment tracking with Weights & Biases, configured by the recipe's ``tracking:`` section.

* Mode: ``auto`` is online when credentials exist (``WANDB_API_KEY`` or a netrc entry for the W&B host),
  else offline (the run is written under ``<run dir>/wandb``; ``wandb sync`` uploads it later). An explicit
  ``WANDB_MODE`` in the environment wins over ``auto``; ``disabled`` turns tracking off.
* One W&B run per training run: global rank 0 stores the run id in ``<run dir>/wandb_run_id`` when it first
  starts the run; a requeued or rerun job reads it back and continues the same run (``resume="allow"``).
* Logged: the scalars the system and callbacks log (loss, loss by timestep bucket, grad norm, learning
  rate per group, ``perf/*`` throughput), validation sample clips (mp4 paths: no moviepy needed), a pose
  preview of the first training batch (what EPI fed the model), and the resolved config with the git commit.
* Secrets (docs/reliability.md §3.4): the API key only ever comes from the environment or netrc, never
  from a config field or an argument. Everything that leaves through the logger or the config dump is
  redacted: values under keys matching ``*_KEY``, ``*_TOKEN``, ``*SECRET*``, ``*PASSWORD*``, and any
  string containing the value of such an environment variable.
"""

from __future__ import annotations

import argparse
import logging
import netrc
import os
import re
import secrets
import string
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import lightning.pytorch as pl
import numpy as np
import yaml
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment

import animatex_train
from animatex_train.training.preemption import PREEMPTED_STATUS

log = logging.getLogger(__name__)

RUN_ID_FILE = "wandb_run_id"
REDACTED = "<redacted>"
_SECRET_KEY = re.compile(r"(_KEY|_TOKEN)$|SECRET|PASSWORD", re.IGNORECASE)
_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MIN_SECRET_LENGTH = 8  # shorter environment values (flags, "1") would redact ordinary words


@dataclass
class TrackingConfig:
    """The ``tracking:`` section of a recipe (W&B).

    Attributes:
        mode: ``auto`` (online with credentials, else offline; ``WANDB_MODE`` wins), ``online``, ``offline``
            or ``disabled`` (no W&B logger at all).
        project: W&B project.
        entity: W&B team or user; None = the account's default.
        group: groups related runs (e.g. an ablation sweep).
        name: display name; None = W&B picks one.
        tags: tags of the run.
        notes: free-text description of the run.
        epi_preview: log a pose preview of the first training batch at fit start.
        epi_preview_samples: rows (samples) of that preview.
    """

    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    project: str = "animatex"
    entity: str | None = None
    group: str | None = None
    name: str | None = None
    tags: list[str] = field(default_factory=list)
    notes: str | None = None
    epi_preview: bool = True
    epi_preview_samples: int = 4

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "online", "offline", "disabled"):
            raise ValueError(f"tracking.mode must be auto, online, offline or disabled, got {self.mode!r}")
        if not self.project:
            raise ValueError("tracking.project must be a W&B project name")
        if self.epi_preview_samples < 1:
            raise ValueError(f"tracking.epi_preview_samples must be >= 1, got {self.epi_preview_samples}")


# ---------------------------------------------------------------------- secrets


def is_secret_key(key: object) -> bool:
    return isinstance(key, str) and bool(_SECRET_KEY.search(key))


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of environment variables whose names look secret (``WANDB_API_KEY``, ``HF_TOKEN``, ...)."""
    env = os.environ if environ is None else environ
    return sorted(
        {v for k, v in env.items() if is_secret_key(k) and len(v) >= _MIN_SECRET_LENGTH}, key=len, reverse=True
    )


def redact(value: Any, secrets: list[str] | None = None) -> Any:
    """A copy of ``value`` (dicts, lists, strings, scalars) with secrets replaced by ``<redacted>``."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, Mapping):
        return {k: REDACTED if is_secret_key(k) and value[k] is not None else redact(value[k], secrets) for k in value}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v, secrets) for v in value)
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
    return value


# ---------------------------------------------------------------------- mode, run id, commit


def has_wandb_credentials(environ: Mapping[str, str] | None = None, netrc_file: str | None = None) -> bool:
    """Whether W&B can authenticate: ``WANDB_API_KEY`` set, or a netrc entry for the W&B host (never read out)."""
    env = os.environ if environ is None else environ
    if env.get("WANDB_API_KEY"):
        return True
    host = urlparse(env.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        entry = netrc.netrc(netrc_file or env.get("NETRC")).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def resolve_mode(
    config: TrackingConfig, environ: Mapping[str, str] | None = None, netrc_file: str | None = None
) -> str:
    """``online``, ``offline`` or ``disabled`` for this process."""
    if config.mode != "auto":
        return config.mode
    env = os.environ if environ is None else environ
    if env.get("WANDB_DISABLED", "").lower() in ("1", "true", "yes"):
        return "disabled"
    chosen = {"offline": "offline", "dryrun": "offline", "disabled": "disabled", "online": "online", "run": "online"}
    if env.get("WANDB_MODE", "").lower() in chosen:
        return chosen[env["WANDB_MODE"].lower()]
    return "online" if has_wandb_credentials(env, netrc_file) else "offline"


def read_or_create_run_id(run_dir: str | Path) -> str:
    """The W&B run id stored in ``<run_dir>/wandb_run_id``; creates it (atomically) on first use. Rank 0 only."""
    path = Path(run_dir) / RUN_ID_FILE
    if path.is_file():
        run_id = path.read_text().strip()
        if not _RUN_ID.fullmatch(run_id):
            raise ValueError(f"{path} holds {run_id!r}, not a W&B run id; delete the file to start a new W&B run")
        return run_id
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # W&B's id format
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with tmp.open("w") as f:
        f.write(run_id + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return run_id


def git_commit(repo: str | Path | None = None) -> str | None:
    """The commit the code runs from (None outside a git checkout); ``git rev-parse`` reads, never writes."""
    root = Path(repo) if repo else Path(animatex_train.__file__).resolve().parents[1]
    try:
        result = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    sha = result.stdout.strip()
    return sha if re.fullmatch(r"[0-9a-f]{40}([0-9a-f]{24})?", sha) else None


# ---------------------------------------------------------------------- the logger


class AnimateXWandbLogger(WandbLogger):
    """Lightning's ``WandbLogger`` with the run id kept in the run directory, redaction, and preemption support.

    Args:
        run_dir: the training run's directory (``trainer.default_root_dir``); the W&B files go to its ``wandb/``.
        config: the ``tracking:`` section.
        mode: ``online`` or ``offline`` (``resolve_mode``).
    """

    def __init__(self, run_dir: str | Path, config: TrackingConfig, mode: str):
        if mode not in ("online", "offline"):
            raise ValueError(f"AnimateXWandbLogger needs mode online or offline, got {mode!r} (disabled: no logger)")
        text = redact({"group": config.group, "name": config.name, "tags": list(config.tags), "notes": config.notes})
        # Into a log (stderr not a terminal) W&B's closing lines came out with colour codes; there it keeps to the
        # essential lines (quiet), and the run's directory is in the run's own log anyway.
        import wandb  # imported by Lightning's logger anyway; not at module import

        settings = wandb.Settings(quiet=not sys.stderr.isatty())
        super().__init__(
            save_dir=str(run_dir),
            project=config.project,
            entity=config.entity,
            group=text["group"],
            name=text["name"],
            tags=text["tags"] or None,
            notes=text["notes"],
            mode=mode,
            settings=settings,
        )
        self._wandb_init.pop("anonymous", None)  # deprecated in wandb; Lightning always passes it
        self.run_dir = Path(run_dir)

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is None and self._wandb_init.get("id") is None:
            # Only global rank 0 gets here (after the strategy set the ranks), so one process owns the id file.
            self._id = self._wandb_init["id"] = read_or_create_run_id(self.run_dir)
        return WandbLogger.experiment.fget(self)

    def log_hyperparams(self, params: dict[str, Any] | argparse.Namespace) -> None:
        super().log_hyperparams(redact(params))

    def finalize(self, status: str) -> None:
        if status == PREEMPTED_STATUS and self._experiment is not None:
            # Before the job is requeued (and its processes killed): mark the run preempting and flush it; the
            # requeued job resumes it by id. A non-zero exit code, because the run did not finish.
            self._experiment.mark_preempting()
            self._experiment.finish(exit_code=1)
            return
        super().finalize(status)
        if self._experiment is not None:
            # Close the run here rather than from W&B's exit hook, which prints its closing lines with colour codes
            # even into a log; a later use (another trainer stage) resumes the same run id.
            self._experiment.finish()
            self._experiment = None


def build_logger(config: TrackingConfig, run_dir: str | Path) -> AnimateXWandbLogger | None:
    """The W&B logger for this run, or None when tracking is disabled."""
    mode = resolve_mode(config)
    if mode == "disabled":
        return None
    if mode == "online" and not has_wandb_credentials():
        log.warning("tracking: online mode without WANDB_API_KEY or a netrc entry; W&B will ask to log in")
    return AnimateXWandbLogger(run_dir, config, mode)


# ---------------------------------------------------------------------- config and previews


class TrackedConfigSaver(SaveConfigCallback):
    """Writes the resolved config (redacted) to ``<log dir>/config.yaml`` and logs it with the git commit."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        log_dir = trainer.log_dir  # a broadcast: every rank must ask
        if trainer.is_global_zero:
            text = self.parser.dump(self.config, format="yaml", skip_unset=False, skip_validation=True)
            config = redact(yaml.safe_load(text))
            if self.save_to_log_dir and log_dir is not None:
                path = Path(log_dir) / self.config_filename
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(yaml.safe_dump(config, sort_keys=False))
            for logger in trainer.loggers:
                logger.log_hyperparams({"resolved_config": config, "git_commit": git_commit() or "unknown"})
        self.already_saved = True


class PosePreview(pl.Callback):
    """Logs, once per fit, a grid of the first training batch: reference | reference pose | driving poses.

    The pose images are the ones the model trains on, after the explicit pose indicator (EPI), so the grid
    shows what EPI did; the caption says which samples it transformed.

    Args:
        num_samples: rows.
        num_frames: driving-pose frames per row (evenly spaced).
    """

    def __init__(self, num_samples: int = 4, num_frames: int = 4):
        self.num_samples = num_samples
        self.num_frames = num_frames
        self._logged = False

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int):
        if self._logged:
            return
        self._logged = True
        loggers = [logger for logger in trainer.loggers if hasattr(logger, "log_image")]
        if not trainer.is_global_zero or not loggers or not hasattr(batch, "pose_images"):
            return
        grid, caption = pose_preview_grid(batch, self.num_samples, self.num_frames)
        for logger in loggers:
            logger.log_image("train/epi_preview", [grid], step=trainer.global_step, caption=[caption])


def pose_preview_grid(batch, num_samples: int = 4, num_frames: int = 4) -> tuple[np.ndarray, str]:
    """``(rows * H, (2 + num_frames) * W, 3)`` uint8 grid of a training batch, and its caption."""
    poses = batch.pose_images[:num_samples].detach().cpu()  # (b, 3, f + 1, H, W) uint8, frame 0 = reference pose
    refs = batch.ref_image[:num_samples].detach().cpu()  # (b, 3, H, W)
    driving = poses.shape[2] - 1
    frames = np.unique(np.linspace(1, driving, min(num_frames, driving)).round().astype(np.int64)) if driving else []
    rows = []
    for i in range(poses.shape[0]):
        tiles = [refs[i], poses[i, :, 0]] + [poses[i, :, int(t)] for t in frames]
        rows.append(np.concatenate([tile.permute(1, 2, 0).numpy() for tile in tiles], axis=1))
    applied = batch.epi_applied.tolist()
    epi = [f"{key}{' (EPI)' if on else ''}" for key, on in zip(batch.keys, applied, strict=True)]
    caption = "reference | reference pose | driving poses; rows: " + ", ".join(epi[: len(rows)])
    return np.concatenate(rows, axis=0).astype(np.uint8), caption
