"""Shared test setup: offline, CPU-only, deterministic; tiny configurations as fixtures."""

from __future__ import annotations

import os
from pathlib import Path

# Before anything imports wandb, huggingface_hub or deepspeed.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("WDS_SECURE", "1")

import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import animatex_train  # noqa: E402,F401  (installs the torchvision compat shim before lightning imports)

REPO_ROOT = Path(__file__).resolve().parents[1]
# Shared test helpers live in tests/support/ (imported as `support`); test modules are imported with
# --import-mode=importlib, so same-named test files in different folders do not collide.
sys.path.insert(0, str(Path(__file__).resolve().parent))
FIXTURES = REPO_ROOT / "tests" / "fixtures"


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need a CUDA device: skipped with the reason elsewhere (``benchmarks/gpu`` runs them)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (benchmarks/gpu/run.sh runs these on one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Each test starts from the same global RNG state and default dtype."""
    torch.manual_seed(0)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES
