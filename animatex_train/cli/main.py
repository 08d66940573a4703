"""``animatex-train``: the command line.

``fit`` / ``validate`` are LightningCLI (recipes are ``--config`` files overlaid
in order, e.g. an experiment recipe then a cluster overlay; ``--print_config`` shows the resolved run).
The project's own subcommands (data preparation, previews, the demo, export, ablations, ...) are one module
each in this folder, ``cli/<subcommand>.py`` with ``main(argv)``: argument parsing and printing only, the work done
by the library modules they call. Every subcommand takes the flag style of ``fit`` (``--max_steps``; hyphenated
spellings are accepted, ``cli/arguments.py``). ``python -m animatex_train`` is the same program.

Errors a user can fix print one line, ``error: <what>, <where>, <how to fix>``, and exit non-zero; the
traceback only with ``--debug`` as the first argument or ``ANIMATEX_DEBUG=1`` (``cli/errors.py``).
"""

from __future__ import annotations

import importlib
import os
import sys

from animatex_train.cli.errors import DEBUG_ENV, debug_requested, user_error

# subcommand -> "module:function" taking argv (list[str]) and returning an exit code.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("animatex_train.cli.demo:main", "tiny end-to-end run on the embedded synthetic dataset (CPU)"),
    "prepare": ("animatex_train.cli.prepare:main", "videos -> poses, CLIP, VAE latents -> shards"),
    "synth": ("animatex_train.cli.synth:main", "write the synthetic character-animation videos"),
    "anchor-pool": ("animatex_train.cli.anchor_pool:main", "build the EPI anchor pool from shards"),
    "epi-preview": ("animatex_train.cli.epi_preview:main", "PNG grid: original | realigned | rescaled"),
    "export": ("animatex_train.cli.export:main", "checkpoint (DDP/ZeRO/FSDP) -> safetensors/.pth"),
    "animate": ("animatex_train.cli.animate:main", "reference image + driving video -> animation mp4"),
    "evaluate": (
        "animatex_train.cli.evaluate:main",
        "generate a test set and score it: PSNR*, SSIM, L1, LPIPS, FID, FID-VID, FVD (as DisCo)",
    ),
    "ablate": ("animatex_train.cli.ablate:main", "the paper's IPI/EPI ablations: list, run, submit, collate"),
    "submit": ("animatex_train.cli.submit:main", "submit a recipe to Slurm (sbatch, requeue on preemption)"),
}
# The system has no test/predict step: generation is `animate`, scoring `evaluate` (cli/lightning.py).
LIGHTNING_SUBCOMMANDS = ("fit", "validate")
REMOVED = {
    "test": "score checkpoints with `animatex-train evaluate`",
    "predict": "generate with `animatex-train animate`",
}


class UnknownSubcommandError(ValueError):
    """A first argument that is no subcommand: one ``error:`` line (exit 2), not argparse's usage screen."""


def _offline_defaults() -> None:
    """Never reach a model hub by accident; W&B offline unless the user chose a mode."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if "WANDB_MODE" not in os.environ and not os.environ.get("WANDB_API_KEY"):
        os.environ["WANDB_MODE"] = "offline"


def lightning_main(argv: list[str] | None) -> int:
    """LightningCLI on ``argv`` (None: the process's own command line)."""
    import yaml

    from animatex_train.cli.errors import config_files
    from animatex_train.cli.lightning import AnimateXCLI
    from animatex_train.training.preemption import refuse_elastic_restarts

    refuse_elastic_restarts()
    for path in config_files(list(sys.argv[1:] if argv is None else argv)):
        with path.open() as handle:  # the same safe loader as jsonargparse's, but its errors name the file
            yaml.safe_load(handle)
    AnimateXCLI(args=argv)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Dispatch; expected errors end as one ``error:`` line and a non-zero code (``cli/errors.py``)."""
    from_command_line = argv is None
    debug, argv = debug_requested(list(sys.argv[1:] if argv is None else argv))
    if from_command_line:
        sys.argv[1:] = argv  # LightningCLI (and Lightning's launcher of the other ranks) read sys.argv
    try:
        return _dispatch(argv, from_command_line)
    except Exception as error:  # noqa: BLE001 - sorted into expected errors (one line) and bugs (re-raised)
        handled = None if debug else user_error(error, argv)
        if handled is None:
            raise
        message, code = handled
        rank = os.environ.get("RANK") if os.environ.get("WORLD_SIZE", "1") != "1" else None
        prefix = f"error: [rank {rank}] " if rank is not None else "error: "
        print(f"{prefix}{message} (traceback: rerun with --debug or {DEBUG_ENV}=1)", file=sys.stderr, flush=True)
        return code


def _dispatch(argv: list[str], from_command_line: bool) -> int:
    _offline_defaults()
    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: animatex-train [--debug] [--version] {"
            + ",".join((*LIGHTNING_SUBCOMMANDS, *SUBCOMMANDS))
            + "} ...\n"
        )
        print(
            f"  {'fit | validate':<16} LightningCLI: --config recipe.yaml [--config overlay.yaml] ... "
            "(fit --help lists every key)"
        )
        for name, (_, help_text) in SUBCOMMANDS.items():
            print(f"  {name:<16} {help_text}")
        return 0
    if argv[0] == "--version":
        from animatex_train import __version__

        print(f"animatex-train {__version__}")
        return 0
    if argv[0] in SUBCOMMANDS:
        module, function = SUBCOMMANDS[argv[0]][0].split(":")
        return int(getattr(importlib.import_module(module), function)(argv[1:]) or 0)
    if argv[0] in REMOVED:
        raise UnknownSubcommandError(
            f"`animatex-train {argv[0]}` does not exist: the model has no {argv[0]} step; {REMOVED[argv[0]]}"
        )
    if argv[0] not in LIGHTNING_SUBCOMMANDS and not argv[0].startswith("-"):
        known = ", ".join((*LIGHTNING_SUBCOMMANDS, *SUBCOMMANDS))
        raise UnknownSubcommandError(f"unknown subcommand {argv[0]!r}; expected one of {known} (animatex-train --help)")
    return lightning_main(None if from_command_line else argv)


if __name__ == "__main__":
    raise SystemExit(main())
