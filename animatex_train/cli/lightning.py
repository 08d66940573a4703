"""The LightningCLI of the project: ``AnimateXSystem`` + ``VideoDataModule`` from layered recipes.

Besides Lightning's sections, a recipe has:

* ``checkpoint:`` the crash-safe checkpoint callback (always on). ``fit`` resumes by itself: without an
  explicit ``--ckpt_path`` it continues from the newest complete checkpoint of the run directory, so
  rerunning the same command after a crash or a preemption resumes.
* ``preemption:`` the signal -> checkpoint -> Slurm requeue -> exit callback (always on; outside Slurm it
  only checkpoints and stops). Under Slurm, Lightning's own auto-requeue is switched off so the two never race.
* ``throughput:`` samples/s, MFU, data wait, memory (always on).
* ``performance:`` speed levers that keep the numbers: attention kernel, compiled blocks, channels-last
  (``training/performance.py``; always on, defaults change nothing).
* ``tracking:`` Weights & Biases (``training/tracking.py``); with a logger, the learning rate of every
  parameter group is logged too (``LearningRateMonitor``).
* ``distributed:`` the process-group timeout applied to strategies given by name.
* ``trust_checkpoint:`` (default false) every checkpoint is read weights-only (``training/checkpoint_trust.py``);
  true allows full unpickling of a *local* ``--ckpt_path`` from your own runs. URLs are never fully unpickled.

``--ckpt_path`` accepts a run's ``checkpoints/`` folder (its newest complete checkpoint), a ``step-<N>`` folder,
its ``state.ckpt`` or a URL; a checkpoint of ours is verified (manifest, sizes, sha256) before it is read.
The hyperparameters saved in it are deliberately *not* re-parsed as command-line options (LightningCLI's
default): the recipe on the command line defines the model, exactly as for the run that wrote the
checkpoint, and a checkpoint that does not fit it fails loudly on its tensor names and shapes.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelSummary, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from animatex_train.data.loading.datamodule import VideoDataModule
from animatex_train.system import AnimateXSystem
from animatex_train.training.checkpoint import CrashSafeCheckpoint, find_resume_checkpoint, resolve_checkpoint
from animatex_train.training.checkpoint_trust import guard_strategy_loading, is_remote
from animatex_train.training.console import ParameterSummary, StepProgressBar, silence_known_harmless_messages
from animatex_train.training.hang_watch import RankHeartbeat
from animatex_train.training.performance import PerformanceLevers
from animatex_train.training.preemption import (
    DistributedConfig,
    PreemptionHandler,
    multi_process_run,
    strategy_with_timeout,
)
from animatex_train.training.throughput import ThroughputMonitor
from animatex_train.training.tracking import PosePreview, TrackedConfigSaver, TrackingConfig, build_logger

log = logging.getLogger(__name__)


class AnimateXCLI(LightningCLI):
    """Recipes are values only: the schema is the typed ``__init__`` signatures and config dataclasses."""

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs):
        silence_known_harmless_messages()  # training/console.py lists each message and why it is harmless
        kwargs.setdefault("save_config_callback", TrackedConfigSaver)  # redacted config.yaml, logged to W&B
        super().__init__(
            AnimateXSystem,
            VideoDataModule,
            args=args,
            run=run,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"default_env": False},
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(CrashSafeCheckpoint, "checkpoint")
        parser.add_lightning_class_args(PreemptionHandler, "preemption")
        parser.add_lightning_class_args(ThroughputMonitor, "throughput")
        parser.add_lightning_class_args(PerformanceLevers, "performance")
        parser.add_class_arguments(TrackingConfig, "tracking")
        parser.add_class_arguments(DistributedConfig, "distributed")
        parser.add_argument(
            "--trust_checkpoint",
            type=bool,
            default=False,
            help="unpickle a local --ckpt_path without restrictions (your own runs only; "
            "never a URL). Default: weights-only, which our checkpoints need",
        )

    def _parse_ckpt_path(self) -> None:
        """Not LightningCLI's: the checkpoint's hyperparameters are not re-parsed as options (module docstring).

        Our hyperparameters (``{"config": asdict(SystemConfig)}``) are not the module's ``__init__`` arguments,
        and re-parsing them would let a checkpoint override the recipe the user gave.
        """

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self._get(self.config_init, "trainer", default={})
        tracking: TrackingConfig = self._get(self.config_init, "tracking")
        distributed: DistributedConfig = self._get(self.config_init, "distributed")
        run_dir = config.get("default_root_dir") or os.getcwd()

        logger = config.get("logger")  # None/True: Lightning's default; False: no logger at all, W&B included
        wandb_logger = build_logger(tracking, run_dir) if logger is not False else None
        if wandb_logger is not None:
            # W&B first: it is then the trainer's log_dir (config.yaml, samples/ go to the run directory).
            others = [] if logger in (None, True) else list(logger) if isinstance(logger, (list, tuple)) else [logger]
            kwargs["logger"] = [wandb_logger, *others]
        has_logger = wandb_logger is not None or (logger is not False and logger != [])

        callbacks = config.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        if has_logger and not any(isinstance(c, LearningRateMonitor) for c in callbacks):
            callbacks.append(LearningRateMonitor(logging_interval="step"))
        if wandb_logger is not None and tracking.epi_preview:
            callbacks.append(PosePreview(num_samples=tracking.epi_preview_samples))
        # Lightning's defaults print "Epoch 2/-2" and "Total FLOPs: 0" for our runs (training/console.py).
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.append(StepProgressBar())
        if config.get("enable_model_summary") is not False and not any(isinstance(c, ModelSummary) for c in callbacks):
            callbacks.append(ParameterSummary())
        kwargs["callbacks"] = callbacks

        multi = multi_process_run(config.get("devices"), config.get("num_nodes"))
        if multi:  # a stalled rank is named, and does not outlive the others (training/hang_watch.py)
            kwargs["callbacks"].append(RankHeartbeat())
        kwargs["strategy"] = strategy_with_timeout(config.get("strategy", "auto"), distributed.timeout_s, multi)
        kwargs["plugins"] = _without_lightning_requeue(config.get("plugins"))
        trainer = super().instantiate_trainer(**kwargs)
        guard_strategy_loading(trainer.strategy, bool(self._get(self.config_init, "trust_checkpoint", default=False)))
        return trainer

    def _resolve_ckpt_path(self) -> bool:
        """Turn a folder ``--ckpt_path`` into its verified ``state.ckpt``; True iff one was given."""
        config = self.config_init[self.subcommand]
        path = config.get("ckpt_path")
        if path is None or path in ("last", "best", "hpc", "registry") or is_remote(path):
            return path is not None
        config["ckpt_path"] = str(resolve_checkpoint(path, check_hashes=True))
        return True

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """``fit`` and ``validate`` only: the system has no test or predict step (``animate`` generates and
        ``evaluate`` scores), so those subcommands would only crash."""
        return {name: keys for name, keys in LightningCLI.subcommands().items() if name in ("fit", "validate")}

    def before_validate(self) -> None:
        self._resolve_ckpt_path()

    def before_fit(self) -> None:
        if self._resolve_ckpt_path():
            return
        config = self.config_init[self.subcommand]
        callback = next(c for c in self.trainer.callbacks if isinstance(c, CrashSafeCheckpoint))
        path = find_resume_checkpoint(callback.directory(self.trainer), callback.verify_hashes_on_resume)
        if path is not None:
            log.info("resuming from %s", path)
            config["ckpt_path"] = str(path)


def _without_lightning_requeue(plugins: Any) -> Any:
    """Under Slurm: a ``SLURMEnvironment(auto_requeue=False)`` plugin, so only ``PreemptionHandler`` requeues.

    Lightning's auto-requeue checkpoints and calls ``scontrol`` from inside its SIGUSR1 handler; with both
    active a signal would requeue the job twice and write a second, non-crash-safe checkpoint.
    """
    # SLURMEnvironment.detect() without its "srun is installed but not used" warning, which fires outside Slurm.
    if "SLURM_NTASKS" not in os.environ or os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return plugins
    items = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    for plugin in items:
        if isinstance(plugin, SLURMEnvironment):
            plugin.auto_requeue = False
            return items
    return [*items, SLURMEnvironment(auto_requeue=False)]
