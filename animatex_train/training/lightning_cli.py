"""The LightningCLI of the project: ``AnimateXSystem`` + ``VideoDataModule`` from layered recipes.

Besides Lightning's sections, a recipe has ``checkpoint:`` (the crash-safe checkpoint callback, always
on). ``fit`` resumes by itself: without an explicit ``--ckpt_path`` it continues from the newest complete
checkpoint of the run directory, so rerunning the same command after a crash or a preemption resumes.
"""

from __future__ import annotations

import logging

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from animatex_train.data.datamodule import VideoDataModule
from animatex_train.system import AnimateXSystem
from animatex_train.training.checkpoint import CrashSafeCheckpoint, find_resume_checkpoint

log = logging.getLogger(__name__)


class AnimateXCLI(LightningCLI):
    """Recipes are values only: the schema is the typed ``__init__`` signatures and config dataclasses."""

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs):
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

    def before_fit(self) -> None:
        config = self.config_init[self.subcommand]
        if config.get("weights_only") is None:
            # our checkpoints hold tensors and plain containers only: load them without unpickling objects
            config["weights_only"] = True
        if config.get("ckpt_path") is not None:
            return
        callback = next(c for c in self.trainer.callbacks if isinstance(c, CrashSafeCheckpoint))
        path = find_resume_checkpoint(callback.directory(self.trainer), callback.verify_hashes_on_resume)
        if path is not None:
            log.info("resuming from %s", path)
            config["ckpt_path"] = str(path)
