"""Adding ``tests/training/numerics_probe.py``'s ``NumericsProbe`` to a ``fit`` run, and reading what it wrote."""

from __future__ import annotations

import json
from pathlib import Path

from support.tiny_dataset import DDP_ARGS

# The probe writes into <run>/probe/ (beside strategy_probe.RunProbe's files). Every module that shares the "ddp"
# run (probed_run caches runs by name) passes these arguments, so whichever runs it first records the numerics.
NUMERICS_PROBE = "--trainer.callbacks+=numerics_probe.NumericsProbe"
PROBED_DDP_ARGS = [*DDP_ARGS, NUMERICS_PROBE]


def numerics_probe_arg(**init_args: int) -> str:
    """The ``--trainer.callbacks+=`` argument adding a ``NumericsProbe`` with ``init_args``."""
    init = ", ".join(f"{key}: {value}" for key, value in init_args.items())
    return f"--trainer.callbacks+={{class_path: numerics_probe.NumericsProbe, init_args: {{{init}}}}}"


def read_numerics(run_dir: Path, rank: int) -> dict:
    """``{"steps": [{"step", "skipped", "grad_norm"}, ...], "batch_dtypes": {...}, "exception": str | None}``."""
    return json.loads((Path(run_dir) / "probe" / f"numerics-rank{rank}.json").read_text())
