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


def test_fit_help_lists_every_nested_model_key():
    """Sub-configs have default instances, so LightningCLI lists their keys instead of one opaque ``--model.x X``."""
    help_text = subprocess.run(
        [sys.executable, "-m", "animatex_train", "fit", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for key in (
        "model.denoiser.ipi.keypoint_row_order",
        "model.denoiser.condition_dropout",
        "model.vae.checkpoint",
        "model.clip.checkpoint",
        "model.sampler.guidance_scale",
        "model.ema.on_cpu",
        "model.numerics.policy",
    ):
        assert f"--{key}" in help_text, key


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "animatex_train", *argv], capture_output=True, text=True)


def test_version_and_help_name_the_subcommands():
    from animatex_train import __version__

    version = _cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"animatex-train {__version__}"
    help_text = _cli("--help").stdout
    assert "fit | validate" in help_text and "evaluate" in help_text and "predict" not in help_text


def test_test_and_predict_are_refused_with_what_to_run_instead():
    """The system has no test/predict step: one error line naming the command to use, no LightningCLI crash."""
    for subcommand, instead in (("test", "animatex-train evaluate"), ("predict", "animatex-train animate")):
        result = _cli(subcommand, "--config", "recipes/debug/tiny_cpu.yaml")
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error: ") and instead in result.stderr and "Traceback" not in result.stderr
    typo = _cli("fitt")
    assert typo.returncode == 2 and "unknown subcommand 'fitt'" in typo.stderr and "fit, validate" in typo.stderr
