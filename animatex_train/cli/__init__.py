"""The command line: ``main.py`` dispatches ``animatex-train <subcommand>``, ``lightning.py`` is the LightningCLI of
``fit``/``validate``, ``errors.py`` turns expected errors into one ``error:`` line. Nothing else in the package
imports this folder (tests/test_layering.py)."""

from animatex_train.cli.main import main

__all__ = ["main"]
