"""A quiet, truthful console for ``fit``: known-harmless framework messages silenced by their exact text, a progress
bar that does not print ``Epoch 2/-2``, and a model summary without a FLOPs figure it cannot measure.

Each silenced message is listed with the reason it is harmless here; anything else still shows. Filters match the
start of the message text exactly (``re.escape``), never a whole category or module.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from typing import Any

from lightning.pytorch.callbacks import RichModelSummary, RichProgressBar

# (start of the message, why it is harmless for this project)
HARMLESS_WARNINGS: tuple[tuple[str, str], ...] = (
    (
        "`isinstance(treespec, LeafSpec)` is deprecated",
        "lightning 2.6.6's _pytree helper on torch >= 2.10; nothing to change on our side until lightning is bumped",
    ),
    (
        "Your `IterableDataset` has `__len__` defined.",
        "ShardStreamLoader's length is exact by design: every rank and worker follows the same epoch plan "
        "(data/loading/loader.py)",
    ),
)
SRUN_HINT = "The `srun` command is available on your system but is not used."
# Lightning's info lines that say nothing about the run: advertisements for its hosted services, and the note that
# our own model summary (ParameterSummary below) replaces its default one.
LIGHTNING_NOTES = ("💡 Tip: For seamless cloud", "Trainer already configured with model summary callbacks")


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LIGHTNING_NOTES)


def silence_known_harmless_messages() -> None:
    """Install the filters (idempotent: ``warnings`` and ``logging`` ignore an identical second filter)."""
    for text, _ in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(text))
    if "SLURM_JOB_ID" not in os.environ:
        # Outside a Slurm allocation the hint cannot apply (there is nothing to srun into); inside one it stays.
        warnings.filterwarnings("ignore", message=re.escape(SRUN_HINT))
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        target = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in target.filters):
            target.addFilter(_DropTips())


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar, without the epoch bound when the run is bounded by steps.

    With ``max_steps`` and no ``max_epochs`` Lightning sets ``max_epochs`` to -1, and its bar then reads
    ``Epoch 2/-2``; here it reads ``Epoch 2``. (``_get_train_description`` is the bar's own hook for that text, in
    the pinned lightning; ``tests/training/test_console.py`` checks it is still there.)
    """

    def _get_train_description(self, current_epoch: int) -> str:
        max_epochs = self.trainer.max_epochs
        if max_epochs is None or max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        description = f"Epoch {current_epoch}"
        return f"{description:{max(len(description), len(self.validation_description))}}"


class ParameterSummary(RichModelSummary):
    """Lightning's rich model summary without its FLOPs column and total.

    Lightning counts FLOPs only by running ``example_input_array`` through the module, which ours does not define
    (its forward samples a whole clip), so it would print ``Total FLOPs: 0``. The real figure depends on the clip
    shape of each batch: the throughput monitor logs it (``perf/tflops_per_device``, ``training/throughput.py``).
    """

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        from lightning.pytorch.utilities.model_summary.model_summary import (
            get_formatted_model_size,
            get_human_readable_count,
        )
        from rich import get_console
        from rich.table import Table

        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        for name, _ in columns:
            table.add_column(name or " ", justify="right" if name in ("Params", "In sizes", "Out sizes") else "left")
        for row in zip(*(values for _, values in columns), strict=True):
            table.add_row(*row)
        console = get_console()
        console.print(table)
        frozen = total_parameters - trainable_parameters
        trainable, frozen_count = (get_human_readable_count(n).strip() for n in (trainable_parameters, frozen))
        console.print(
            f"Trainable params: {trainable}, non-trainable: {frozen_count}, size: "
            f"{get_formatted_model_size(model_size)} MB; modules in train mode: {total_training_modes['train']}, "
            f"in eval mode: {total_training_modes['eval']}"
        )
