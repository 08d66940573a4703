"""The LightningCLI of the project: ``AnimateXSystem`` + ``VideoDataModule`` from layered recipes."""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from animatex_train.data.datamodule import VideoDataModule
from animatex_train.system import AnimateXSystem


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
