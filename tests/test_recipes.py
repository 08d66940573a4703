"""Every recipe parses into the system, the data module and the trainer, with every value it sets (nothing runs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from animatex_train.cli.lightning import AnimateXCLI

# recipes/eval/ are evaluation protocols, not LightningCLI configs (tests/eval/test_evaluate_cli.py parses them)
_ROOT = Path(__file__).resolve().parents[1] / "recipes"
RECIPES = sorted(p for p in _ROOT.rglob("*.yaml") if p.relative_to(_ROOT).parts[0] != "eval")


def test_there_are_recipes():
    assert any(p.name == "tiny_cpu.yaml" for p in RECIPES)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_recipe_parses(recipe):
    args = ["--config", str(recipe)]
    if "debug" not in recipe.parts and "train" not in recipe.parts:  # overlays: on top of the tiny recipe
        args = ["--config", str(recipe.parents[1] / "debug" / "tiny_cpu.yaml"), *args]
    if "train" in recipe.parts:  # full-size recipes name user-supplied weights: build the model from scratch
        args += ["--model.init.checkpoint=null"]
    cli = AnimateXCLI(args=args, run=False)
    resolved = _flatten(cli.config.as_dict())
    written = _with_includes(_flatten(yaml.safe_load(recipe.read_text()) or {}), recipe.parent)
    if "train" in recipe.parts:
        written.pop("model.init.checkpoint", None)  # replaced on the command line above
    differ = {
        key: (value, resolved.get(key, "<absent>"))
        for key, value in written.items()
        if value != {} and not _matches(value, resolved.get(key, "<absent>"))
    }
    assert not differ, f"values of {recipe.name} that did not reach the resolved config: {differ}"
    assert cli.trainer.max_steps == resolved["trainer.max_steps"]  # the trainer is built from the resolved values


def _with_includes(written: dict, folder: Path) -> dict:
    """A section given as a YAML file (``model.denoiser: ../x.yaml``, relative to the recipe) as its values."""
    out = {}
    for key, value in written.items():
        if isinstance(value, str) and value.endswith(".yaml"):
            out.update(_flatten(yaml.safe_load((folder / value).read_text()), f"{key}."))
        else:
            out[key] = value
    return out


def _flatten(values: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and scalars are leaves."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _matches(written, resolved) -> bool:
    """Whether the resolved value holds what the recipe wrote (a written mapping may leave keys at defaults)."""
    if isinstance(written, dict):
        return isinstance(resolved, dict) and all(_matches(v, resolved.get(k, "<absent>")) for k, v in written.items())
    if isinstance(written, list):
        return (
            isinstance(resolved, (list, tuple))
            and len(resolved) == len(written)
            and all(_matches(w, r) for w, r in zip(written, resolved, strict=True))
        )
    return (str(resolved) if isinstance(resolved, Path) else resolved) == written


def test_recipe_key_typo_fails_before_training(tmp_path, capsys):
    bad = tmp_path / "typo.yaml"
    bad.write_text("model:\n  denoiser:\n    base_chanels: 32\n")
    with pytest.raises(SystemExit):
        AnimateXCLI(args=["--config", str(RECIPES[0]), "--config", str(bad)], run=False)
    assert "base_chanels" in capsys.readouterr().err


def test_layered_configs_override_in_order(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("trainer:\n  max_steps: 7\ndata:\n  batch_size: 3\n")
    tiny = Path(__file__).resolve().parents[1] / "recipes" / "debug" / "tiny_cpu.yaml"
    cli = AnimateXCLI(args=["--config", str(tiny), "--config", str(overlay)], run=False)
    assert cli.trainer.max_steps == 7 and cli.datamodule.batch_size == 3
