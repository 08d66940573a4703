"""Start-up cost of the command line: importing the package and ``animatex-train --help`` load no torch."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
{statement}
heavy = sorted(m for m in ("torch", "torchvision", "lightning", "deepspeed") if m in sys.modules)
print(",".join(heavy))
"""


def _heavy_modules_after(statement: str) -> str:
    code = CHECK.format(statement=statement)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_importing_the_package_loads_no_torch():
    assert _heavy_modules_after("import animatex_train") == ""


def test_help_loads_no_torch():
    statement = (
        "import contextlib, io\nfrom animatex_train.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n    main(['--help'])"
    )
    assert _heavy_modules_after(statement) == ""


def test_the_torchvision_shim_runs_when_torchvision_is_imported():
    """Lightning imports torchvision; on the CPU-only install that needs the shim (``_compat.py``) to run first."""
    statement = "import animatex_train\nimport lightning.pytorch\nimport torchvision.transforms"
    assert "torchvision" in _heavy_modules_after(statement)
