"""House rules on imports: the pure packages import no training infrastructure, and ``data/`` is layered by concern.

``data/``: ``format`` <- ``pose`` <- ``epi`` <- ``loading`` (each imports only the ones left of it, and itself);
``synthetic`` and ``preprocess`` import only ``format`` (and ``pose``, to draw); nothing in ``data/`` imports the
model; neither the Lightning system nor ``training/`` imports ``eval`` (``launch/`` may read ``eval``); only the
entry points import ``cli/``, and every subcommand's argument parsing lives there (``cli/<subcommand>.py``).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "animatex_train"
FORBIDDEN = {"lightning", "pytorch_lightning", "deepspeed", "wandb", "webdataset"}


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (imports inside functions count too)."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # ``from animatex_train.data import format`` imports the subpackage itself
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def package_imports(path: Path) -> set[str]:
    """The parts of ``animatex_train`` that ``path`` imports, as dotted paths below it (``data.format.schema``)."""
    return {m.removeprefix("animatex_train.") for m in imported_modules(path) if m.startswith("animatex_train.")}


# What each part of data/ may import from the package, besides itself (prefixes of dotted paths).
DATA_LAYERS = {
    "format": (),
    "pose": ("data.format",),
    "epi": ("data.format", "data.pose"),
    "loading": ("data.format", "data.pose", "data.epi"),
    "synthetic": ("data.format", "data.pose"),
}


def _allowed(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_data_subpackages_import_only_the_layers_below_them():
    assert {p.name for p in (PACKAGE / "data").iterdir() if p.is_dir() and p.name != "__pycache__"} == set(DATA_LAYERS)
    offenders = {}
    for layer, below in DATA_LAYERS.items():
        allowed = (f"data.{layer}", *below)
        for path in (PACKAGE / "data" / layer).rglob("*.py"):
            bad = {m for m in package_imports(path) if not _allowed(m, allowed)}
            if bad:
                offenders[str(path.relative_to(PACKAGE))] = sorted(bad)
    assert not offenders, offenders


def test_the_format_layer_is_numpy_only():
    """``preprocess/`` and offline tools read shards through it without pulling in torch (webdataset's ``gopen``
    is allowed: the shard reader opens remote URLs with it, imported only when one is given)."""
    heavy = {"torch", "torchvision", *FORBIDDEN} - {"webdataset"}
    offenders = {}
    for path in (PACKAGE / "data" / "format").rglob("*.py"):
        bad = {m for m in imported_modules(path) if m.split(".")[0] in heavy}
        if bad:
            offenders[str(path.relative_to(PACKAGE))] = sorted(bad)
    assert not offenders, offenders


def test_preprocess_imports_only_the_format_and_pose_drawing_from_data():
    offenders = {}
    for path in (PACKAGE / "preprocess").rglob("*.py"):
        bad = {m for m in package_imports(path) if _allowed(m, ("data",)) and not _allowed(m, DATA_LAYERS["synthetic"])}
        if bad:
            offenders[str(path.relative_to(PACKAGE))] = sorted(bad)
    assert not offenders, offenders


def test_training_side_imports_no_evaluation():
    """The system and training code never reach for the evaluation. ``launch/`` orchestrates whole commands (an
    ablation campaign collates the metrics ``evaluate`` wrote), so it may read ``eval``."""
    offenders = {}
    for path in [PACKAGE / "system.py", *(PACKAGE / "training").rglob("*.py")]:
        bad = {m for m in package_imports(path) if _allowed(m, ("eval",))}
        if bad:
            offenders[str(path.relative_to(PACKAGE))] = sorted(bad)
    assert not offenders, offenders


def test_only_the_entry_points_import_the_command_line():
    """``cli/`` sits on top: it imports the rest, nothing imports it back (no cycle through ``system.py``) except
    ``__main__``."""
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        relative = str(path.relative_to(PACKAGE))
        if relative.startswith("cli/") or relative == "__main__.py":
            continue
        bad = {m for m in package_imports(path) if m == "cli" or m.startswith("cli.")}
        if bad:
            offenders[relative] = sorted(bad)
    assert not offenders, offenders


# The one parser outside cli/: jsonargparse derives it from PrepareConfig's fields (no flag is declared by hand),
# and the embedded dataset reads its YAML through it too.
CONFIG_PARSERS = {"preprocess/prepare.py"}


def test_argument_parsing_lives_in_the_command_line_layer():
    """Library modules have no ``*_main`` entry points and build no argument parsers; each subcommand is
    ``cli/<name>.py`` with a ``main(argv)`` that the dispatcher names."""
    from animatex_train.cli.main import SUBCOMMANDS

    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        relative = str(path.relative_to(PACKAGE))
        if relative.startswith("cli/") or relative == "__main__.py":
            continue
        tree = ast.parse(path.read_text())
        mains = [
            n.name
            for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef) and (n.name == "main" or n.name.endswith("_main"))
        ]
        parsers = (
            []
            if relative in CONFIG_PARSERS
            else [
                "ArgumentParser()"
                for n in ast.walk(tree)
                if isinstance(n, ast.Call) and getattr(n.func, "attr", getattr(n.func, "id", None)) == "ArgumentParser"
            ]
        )
        if mains or parsers:
            offenders[relative] = mains + parsers
    assert not offenders, offenders
    for name, (target, _) in SUBCOMMANDS.items():
        assert target == f"animatex_train.cli.{name.replace('-', '_')}:main", (name, target)
        assert (PACKAGE / "cli" / f"{name.replace('-', '_')}.py").is_file(), name


def test_the_import_rules_catch_a_violation(tmp_path):
    """The scan sees imports inside functions and ``from package import module`` forms."""
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from animatex_train.data import epi\n    import animatex_train.eval.video_io\n")
    assert {"data.epi", "eval.video_io"} <= package_imports(source)
    assert not _allowed("data.epi", DATA_LAYERS["pose"]) and _allowed("data.format.schema", DATA_LAYERS["pose"])


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
