"""The paper's ablation study (Tables 4-6) as a campaign: which runs there are, and what each one changes.

Each ablation is a values-only recipe overlay ``recipes/ablations/<name>.yaml`` that sets the one switch of
its variant (``model.denoiser.ipi.*`` for the implicit pose indicator, ``data.epi.*`` for the explicit
one) plus its ``tracking`` name and tags. This module only names them in the paper's order and reads
back what each overlay changes, so the overlay file stays the single source of truth.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import animatex_train

ABLATIONS_DIR = Path(animatex_train.__file__).resolve().parents[1] / "recipes" / "ablations"


@dataclass(frozen=True)
class Ablation:
    """One row of the paper's ablation tables.

    Attributes:
        name: the overlay's file stem and the run directory's name.
        tables: where the row appears (Table 4 is the main-text subset of the appendix's Table 5).
        row: the row's label in the paper.
    """

    name: str
    tables: str
    row: str

    def overlay(self, directory: Path = ABLATIONS_DIR) -> Path:
        """The overlay file of this ablation."""
        return directory / f"{self.name}.yaml"


# The paper's order: Table 4/5 rows (IPI, then EPI, then the full model), then Table 6's lambda sweep.
CAMPAIGN: tuple[Ablation, ...] = (
    Ablation("wo_ipi", "4, 5", "w/o IPI"),
    Ablation("wo_lq", "4, 5", "w/o LQ"),
    Ablation("wo_dq", "4, 5", "w/o DQ"),
    Ablation("pa", "5", "PA"),
    Ablation("kv_q", "5", "KV_Q"),
    Ablation("wo_epi", "4, 5", "w/o EPI"),
    Ablation("wo_add", "5", "w/o Add"),
    Ablation("wo_drop", "5", "w/o Drop"),
    Ablation("wo_bs", "5", "w/o BS"),
    Ablation("wo_nf", "5", "w/o NF"),
    Ablation("wo_al", "5", "w/o AL"),
    Ablation("wo_rescale", "4, 5", "w/o Rescale"),
    Ablation("wo_realign", "4, 5", "w/o Realign"),
    Ablation("full", "4, 5, 6", "Animate-X (full)"),
    Ablation("lambda_1.0", "6", "λ = 100 %"),
    Ablation("lambda_0.98", "6", "λ = 98 %"),
    Ablation("lambda_0.95", "6", "λ = 95 %"),
    Ablation("lambda_0.9", "6", "λ = 90 %"),
    Ablation("lambda_0.8", "6", "λ = 80 %"),
)
BY_NAME: dict[str, Ablation] = {a.name: a for a in CAMPAIGN}


class CampaignError(ValueError):
    """An ablation selection or overlay that cannot be used; the message says what to pass."""


def select(only: str | None) -> list[Ablation]:
    """The campaign, or the comma-separated subset ``only`` in campaign order.

    Raises:
        CampaignError: a name that is not an ablation.
    """
    if not only:
        return list(CAMPAIGN)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise CampaignError(f"--only: unknown ablation(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    return [a for a in CAMPAIGN if a.name in names]


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and scalars are leaves)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def overlay_changes(ablation: Ablation, directory: Path = ABLATIONS_DIR) -> dict[str, Any]:
    """The settings the overlay changes, as dotted keys (``tracking`` left out: it labels, it changes nothing).

    Raises:
        CampaignError: the overlay file is missing or is not a mapping.
    """
    path = ablation.overlay(directory)
    if not path.is_file():
        raise CampaignError(f"ablation {ablation.name}: overlay {path} not found")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, Mapping):
        raise CampaignError(f"{path}: an overlay must be a mapping of recipe sections")
    return {k: v for k, v in flatten(values).items() if not k.startswith("tracking.")}


def describe_changes(changes: Mapping[str, Any]) -> str:
    """``model.denoiser.ipi.enabled=False`` style text; ``(base recipe)`` when nothing changes."""
    return ", ".join(f"{k}={v}" for k, v in changes.items()) or "(base recipe)"


# Every run keeps the per-step ledger and the metrics file: collate reads them, never W&B.
RUN_CALLBACKS = ("animatex_train.training.ledger.SampleLedger", "animatex_train.training.run_metrics.RunMetrics")


def run_overrides(
    ablation: Ablation, run_dir: Path, group: str, max_steps: int | None = None, wandb_mode: str | None = None
) -> list[str]:
    """``fit`` arguments of one run, after the base ``--config`` files: its overlay, run dir, group, callbacks.

    ``max_steps`` also moves the one validation to the last step, so every run reports a validation loss.
    """
    overrides = [
        "--config",
        str(ablation.overlay()),
        f"--trainer.default_root_dir={run_dir}",
        f"--tracking.group={group}",
        *(f"--trainer.callbacks+={c}" for c in RUN_CALLBACKS),
    ]
    if max_steps is not None:
        overrides += [f"--trainer.max_steps={max_steps}", f"--trainer.val_check_interval={max_steps}"]
    if wandb_mode:
        overrides.append(f"--tracking.mode={wandb_mode}")
    return overrides


def write_json(path: Path, value: dict[str, Any]) -> None:
    """Atomic: a campaign killed mid-write leaves the previous file, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(tmp, path)
