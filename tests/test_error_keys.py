"""Every recipe key an error or warning message names exists, spelled as the user writes it.

The messages are read from the source (every string in a ``raise``, an exception built elsewhere, a ``*check*``
helper's arguments, a logging or ``warnings`` call) and each dotted key under a recipe's top-level sections
(``model.denoiser.ipi.width``, ``data.epi.rescale``, ``encoders.vae.checkpoint``...) is resolved against the
schemas users write: ``animatex-train fit --help`` and ``prepare``'s config parser.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from animatex_train.cli.errors import SECTION_PATHS, full_key_paths

PACKAGE = Path(__file__).resolve().parents[1] / "animatex_train"
FIT_ROOTS = (
    "model",
    "data",
    "trainer",
    "tracking",
    "distributed",
    "checkpoint",
    "performance",
    "preemption",
    "throughput",
)
PREPARE_ROOTS = ("clips", "pose", "encoders", "shards")
KEY = re.compile(r"(?<![\w./`'-])(" + "|".join(FIT_ROOTS + PREPARE_ROOTS) + r")((?:\.[a-z_][a-z0-9_]*)+)")
# Configs read in several places name keys from their own section; the CLI spells them out (cli/errors.py).
SECTION_KEY = re.compile(r"(?<![\w./`'-])(" + "|".join(SECTION_PATHS["fit"]) + r")((?:\.[a-z_][a-z0-9_]*)+)")
# Class-typed sections: their keys are the chosen class's arguments, which --help does not list.
OPEN_SECTIONS = ("trainer.callbacks", "trainer.strategy", "trainer.logger", "trainer.plugins")
LOGGING_CALLS = {"debug", "info", "warning", "error", "exception", "warn", "critical"}


def _message_nodes(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            yield node.exc
        elif isinstance(node, ast.Call):
            name = getattr(node.func, "attr", None) or getattr(node.func, "id", "")
            if name.endswith(("Error", "Warning")) or "check" in name.lower() or name in LOGGING_CALLS:
                yield from node.args


def quoted_keys() -> dict[str, list[str]]:
    """Dotted recipe keys in the package's messages -> where they appear (``file:line``)."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for message in _message_nodes(ast.parse(path.read_text())):
            for node in ast.walk(message):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
                    for match in KEY.finditer(node.value):
                        found.setdefault(match.group(0), []).append(where)
                    for match in SECTION_KEY.finditer(node.value):  # as fit and prepare spell them
                        for command in ("fit", "prepare"):
                            spelled = full_key_paths(match.group(0), command)
                            if spelled != match.group(0):
                                found.setdefault(spelled, []).append(where)
    return found


@pytest.fixture(scope="module")
def schema() -> set[str]:
    env = {**os.environ, "COLUMNS": "400"}
    help_text = subprocess.run(
        [sys.executable, "-m", "animatex_train", "fit", "--help"], capture_output=True, text=True, check=True, env=env
    ).stdout
    keys = set(re.findall(r"^\s+--([A-Za-z_][\w.]*)", help_text, re.M))
    from animatex_train.preprocess.prepare import config_parser

    keys |= {s[2:] for action in config_parser()._actions for s in action.option_strings if s.startswith("--")}
    return keys


def resolves(key: str, schema: set[str]) -> bool:
    """A key, a section, a name cut at an f-string field (``rescale.max_{kind}_parts``), or under a class-typed
    section."""
    prefix = key if key.endswith("_") else key + "."
    return key in schema or any(k.startswith(prefix) for k in schema) or key.startswith(OPEN_SECTIONS)


def test_messages_name_keys_that_exist(schema):
    keys = quoted_keys()
    assert len(keys) > 30, f"the scan found only {sorted(keys)}: has the message style changed?"
    expected = {
        "model.denoiser.ipi.keypoint_row_order",
        "data.num_workers",
        "pose.method",
        "model.sampler.num_steps",
        "encoders.vae.checkpoint",
        "model.diffusion.loss",
        "data.epi.apply_prob",
    }
    assert expected <= set(keys), expected - set(keys)
    unknown = {key: where for key, where in keys.items() if not resolves(key, schema)}
    assert not unknown, f"messages name keys no recipe can set: {unknown}"


def test_the_scan_catches_a_wrong_key(schema):
    probe = ast.parse(
        'def f(x):\n    if x:\n        raise ValueError(f"set model.ipi.width >= {x}")\n'
        '    log.warning("data.num_workers is %d", x)\n'
    )
    messages = [n.value for m in _message_nodes(probe) for n in ast.walk(m) if isinstance(n, ast.Constant)]
    keys = {match.group(0) for text in messages if isinstance(text, str) for match in KEY.finditer(text)}
    assert keys == {"model.ipi.width", "data.num_workers"}
    assert not resolves("model.ipi.width", schema) and resolves("model.denoiser.ipi.width", schema)
    assert resolves("data.num_workers", schema) and resolves("model.denoiser.ipi", schema)


def test_fit_names_a_bad_section_key_as_the_recipe_writes_it(capsys):
    from animatex_train.cli.main import main

    recipe = PACKAGE.parent / "recipes" / "debug" / "tiny_cpu.yaml"
    assert main(["fit", "--config", str(recipe), "--model.sampler.num_steps", "0"]) == 2
    assert "error: model.sampler.num_steps must be >= 1, got 0" in capsys.readouterr().err
