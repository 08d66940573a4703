"""A ``fit`` of the tiny recipe inside the test process, with callbacks a test passes in (to watch the real step)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch

from support.tiny_dataset import build_tiny_dataset, fit_args


def fit_tiny(
    root: Path,
    max_steps: int,
    args: Sequence[str] = (),
    callbacks: Sequence[pl.Callback] = (),
    first: Sequence[pl.Callback] = (),
):
    """Train the tiny recipe for ``max_steps`` on a dataset under ``root`` (built if absent), one CPU thread.

    ``args`` are further CLI arguments; ``callbacks`` run after the recipe's own, ``first`` before them. Returns the
    ``AnimateXCLI`` (its ``trainer`` and ``model`` after the fit).
    """
    from animatex_train.cli.lightning import AnimateXCLI

    build_tiny_dataset(root / "data")
    fit = fit_args(root / "data", root / "run", max_steps=max_steps)[1:]  # [1:]: no "fit" subcommand with run=False
    cli = AnimateXCLI(args=[*fit, *args], run=False)
    cli.trainer.callbacks[:0] = list(first)
    cli.trainer.callbacks.extend(callbacks)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the fit subprocesses of other tests: two threads on two busy cores crawl
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    finally:
        torch.set_num_threads(threads)
    return cli
