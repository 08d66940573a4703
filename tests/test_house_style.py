"""House rules that hold for the whole tree: small files, one formatter, one flag style, self-contained docs."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from animatex_train.cli.arguments import CommandParser, normalise_flags
from animatex_train.cli.main import SUBCOMMANDS

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "animatex_train"
MAX_LINES = 400


def test_no_package_file_is_over_the_size_cap():
    long = {
        str(p.relative_to(REPO)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these files (cap {MAX_LINES} lines): {long}"


def test_the_tree_is_formatted_by_ruff():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e .[dev])")
    result = subprocess.run(
        [ruff, "format", "--check", "animatex_train", "tests", "benchmarks"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fmt: skip" not in "".join(p.read_text() for p in PACKAGE.rglob("*.py"))


def test_package_and_docs_point_only_at_what_ships_with_them():
    """References go to the paper, upstream files or docs/ here, not to design notes outside the repository."""
    outside = re.compile(
        r"ANIMATEX_SPEC|RELIABILITY(_PROBE)?\.md|DEPENDENCIES\.md|EVALUATION\.md|INFERENCE\.md|"
        r"STYLE\.md|shared/design"
    )
    files = [*PACKAGE.rglob("*.py"), *(REPO / "docs").rglob("*.md"), REPO / "README.md"]
    hits = [
        f"{p.relative_to(REPO)}:{i}"
        for p in files
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if outside.search(line)
    ]
    assert not hits, hits


@pytest.mark.parametrize("name", [n for n in SUBCOMMANDS if n != "prepare"])
def test_every_subcommand_declares_the_lightning_flag_style(name):
    """``--max_steps`` as in ``fit --trainer.max_steps``; ``prepare`` is jsonargparse, derived from its config."""
    module = importlib.import_module(f"animatex_train.cli.{name.replace('-', '_')}")
    parser = module.build_parser()
    assert isinstance(parser, CommandParser) and parser.prog == f"animatex-train {name}"
    flags = [s for action in parser._actions for s in action.option_strings if s.startswith("--")]
    assert flags and all("-" not in s[2:] for s in flags), flags


def test_hyphenated_spellings_mean_the_same_flag():
    assert normalise_flags(["--max-steps", "3", "--eval-arg=--test-set=a-b.jsonl", "-o", "x-y", "--", "--a-b"]) == [
        "--max_steps",
        "3",
        "--eval_arg=--test-set=a-b.jsonl",
        "-o",
        "x-y",
        "--",
        "--a-b",
    ]
    parser = CommandParser("probe", "probe")
    parser.add_argument("--max_steps", type=int)
    assert parser.parse_args(["--max-steps", "3"]).max_steps == 3 == parser.parse_args(["--max_steps=3"]).max_steps
    parser.add_argument("--dry-run", action="store_true")
    with pytest.raises(ValueError, match="declare '--dry-run' as '--dry_run'"):
        parser.parse_args([])
