"""House rule: models/, encoders/, diffusion/ import no Lightning/DeepSpeed/W&B/WebDataset; data/ imports no models/."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "animatex_train"
FORBIDDEN = {"lightning", "pytorch_lightning", "deepspeed", "wandb", "webdataset"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_pure_packages_import_no_training_infrastructure():
    offenders = {}
    for sub in ("models", "encoders", "diffusion"):
        for path in (PACKAGE / sub).rglob("*.py"):
            bad = {m for m in imported_modules(path) if m.split(".")[0] in FORBIDDEN}
            if bad:
                offenders[str(path.relative_to(PACKAGE))] = sorted(bad)
    assert not offenders, offenders


def test_data_does_not_import_models():
    offenders = [
        str(p.relative_to(PACKAGE))
        for p in (PACKAGE / "data").rglob("*.py")
        if any(m.startswith("animatex_train.models") for m in imported_modules(p))
    ]
    assert not offenders, offenders


def test_importing_the_pure_packages_loads_no_training_infrastructure():
    import subprocess
    import sys

    code = (
        "import sys, animatex_train.models.unet, animatex_train.models.official, animatex_train.diffusion.sampling, "
        "animatex_train.encoders.vae, animatex_train.encoders.clip; "
        f"print(sorted(m for m in {sorted(FORBIDDEN)!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
