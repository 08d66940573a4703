"""Evaluation tests: the reference-fixture helpers (``metrics_reference``) import by name from this folder."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


import pytest  # noqa: E402
import torch  # noqa: E402

_WEIGHTS: dict[tuple[str, str], Path] = {}


@pytest.fixture(scope="session")
def random_weight_file(tmp_path_factory):
    """``(fixture_dir, kind) -> path`` of the fixture's regenerated random network (``vgg16`` / ``fid_inception``),
    hash-checked against the JSON, written once per session."""
    from metrics_reference import load_json, random_fid_inception_state, random_vgg16_state

    def get(fixture: Path, kind: str) -> Path:
        key = (str(fixture), kind)
        if key not in _WEIGHTS:
            recipes = load_json(fixture)["random_weights"]
            state = (
                random_vgg16_state(recipes["lpips_vgg16_trunk"])
                if kind == "vgg16"
                else random_fid_inception_state(recipes["pytorch_fid_inception"])
            )
            path = tmp_path_factory.mktemp(f"{fixture.name}_{kind}") / f"{kind}.pth"
            torch.save(state, path)
            _WEIGHTS[key] = path
        return _WEIGHTS[key]

    return get
