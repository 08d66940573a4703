"""A quiet, truthful console: which framework messages are silenced, the progress bar text, the model summary,
and the warning lines a demo-style ``fit`` still prints (none)."""

from __future__ import annotations

import logging
import re
import warnings
from types import SimpleNamespace

import pytest
from lightning.pytorch.callbacks import RichProgressBar
from support.tiny_dataset import build_tiny_dataset, fit_args, fit_env, run_fit

from animatex_train.training.console import (
    HARMLESS_WARNINGS,
    ParameterSummary,
    StepProgressBar,
    silence_known_harmless_messages,
)


def test_only_the_listed_messages_are_silenced(monkeypatch, caplog):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        silence_known_harmless_messages()
        for text, _ in HARMLESS_WARNINGS:
            warnings.warn(f"{text} (and the rest of the framework's sentence)", UserWarning, stacklevel=1)
        warnings.warn("The `srun` command is available on your system but is not used. HINT: ...", stacklevel=1)
        warnings.warn("Your `IterableDataset` is something else entirely", UserWarning, stacklevel=1)
        warnings.warn("a warning of our own", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == [
        "Your `IterableDataset` is something else entirely",
        "a warning of our own",
    ]
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        rank_zero.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]...")
        rank_zero.info("Trainer already configured with model summary callbacks: [<class '...ParameterSummary'>].")
        rank_zero.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]


def test_the_srun_hint_stays_inside_a_slurm_allocation(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        silence_known_harmless_messages()
        warnings.warn("The `srun` command is available on your system but is not used. HINT: ...", stacklevel=1)
    assert len(seen) == 1


@pytest.mark.parametrize(("max_epochs", "expected"), [(-1, "Epoch 2"), (5, "Epoch 2/4")])
def test_the_progress_bar_has_no_negative_epoch_bound(max_epochs, expected):
    # The bar's own hook for this text in the pinned lightning (StepProgressBar overrides it).
    assert callable(getattr(RichProgressBar, "_get_train_description", None))
    bar = StepProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=max_epochs)
    assert bar._get_train_description(2).strip() == expected


def test_the_model_summary_prints_no_flops(capsys):
    data = [
        (" ", ["0"]),
        ("Name", ["denoiser"]),
        ("Type", ["AnimateXDenoiser"]),
        ("Params", ["2.5 M"]),
        ("Mode", ["train"]),
        ("FLOPs", ["0"]),
    ]
    ParameterSummary.summarize(data, 2_500_000, 2_500_000, 9.855, {"train": 1060, "eval": 0}, total_flops=0)
    out = capsys.readouterr().out
    assert "AnimateXDenoiser" in out and "2.5 M" in out and "Trainable params: 2.5 M" in out
    assert "FLOPs" not in out


# A line of Python's warnings output ("path.py:12: Message"), a Lightning tip, or a bar/summary we replaced.
_NOISE = re.compile(r"^\S+\.py:\d+: |💡 Tip|Epoch \d+/-\d|Total FLOPs|\x1b\[")


@pytest.mark.slow  # a fit with validation sampling: about a minute on 2 cores
def test_a_demo_style_fit_prints_no_framework_warnings(tmp_path):
    """The demo's fit (the tiny recipe, W&B offline, progress bar, model summary, validation with a sample clip),
    on a tiny dataset, into a log: the warning lines it still prints, ideally none."""
    data = tmp_path / "data"
    build_tiny_dataset(data)
    args = fit_args(data, tmp_path / "run", max_steps=2, validate=True)
    for flag in ("--trainer.logger", "--trainer.enable_progress_bar", "--trainer.enable_model_summary"):
        i = args.index(flag)
        del args[i : i + 2]  # back to the recipe's values, as the demo runs it
    env = {**fit_env(), "WANDB_MODE": "offline"}
    output = run_fit([*args, "--tracking.mode=offline"], env, timeout_s=600)
    remaining = [line for line in output.splitlines() if _NOISE.search(line)]
    assert remaining == [], "\n".join(remaining)
    assert "Trainable params" in output and "Epoch 0" in output  # the summary and the bar did print
