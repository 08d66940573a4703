"""The inference package runs without the training stack: no Lightning, DeepSpeed or W&B for exports and
official checkpoints (a training checkpoint is the one input read through training/export.py)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "animatex_train" / "inference"
FORBIDDEN = {"lightning", "pytorch_lightning", "deepspeed", "wandb", "webdataset"}


def test_no_module_level_import_of_the_training_stack():
    offenders = {}
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only: weights.py imports training/export lazily, for checkpoints
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            )
            bad = [n for n in names if n.split(".")[0] in FORBIDDEN or n.startswith("animatex_train.training")]
            if bad:
                offenders[path.name] = bad
    assert not offenders, offenders


def test_loading_an_export_and_planning_loads_no_training_stack(weights):
    code = (
        "import sys; from animatex_train.inference.weights import load_denoiser; "
        "import animatex_train.inference.pipeline, animatex_train.cli.animate, animatex_train.inference.batch; "
        f"load_denoiser({str(weights.export)!r}); "
        f"print(sorted(m for m in {sorted(FORBIDDEN)!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", out
