"""Layering: the metric code is pure (no Lightning/DeepSpeed/W&B/WebDataset), and the training side never imports
the evaluation (an in-training evaluation would live in eval/ and be added with --trainer.callbacks+=)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "animatex_train"
FORBIDDEN = {"lightning", "pytorch_lightning", "deepspeed", "wandb", "webdataset"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_metrics_are_pure():
    offenders = {
        str(p.relative_to(PACKAGE)): sorted(m for m in _imports(p) if m.split(".")[0] in FORBIDDEN)
        for p in (PACKAGE / "eval" / "metrics").rglob("*.py")
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_training_side_does_not_import_the_evaluation():
    files = [PACKAGE / "system.py", *(PACKAGE / "training").rglob("*.py")]
    offenders = {
        str(p.relative_to(PACKAGE)): sorted(m for m in _imports(p) if m.startswith("animatex_train.eval"))
        for p in files
    }
    assert not {k: v for k, v in offenders.items() if v}
