"""The command line's one error style: ``error: <what>, <where>, <how to fix>`` and a non-zero exit code.

Expected errors (a bad input, a damaged or refused file, a wrong configuration value, a full disk) are what a
user meets every week; they print one line, not a traceback. Anything else is a bug and keeps its traceback.
``--debug`` (first argument) or ``ANIMATEX_DEBUG=1`` shows the traceback of expected errors too.

Exit codes: 2 for configuration and input errors (the code argparse uses for usage errors), 1 for the rest.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import shutil
from pathlib import Path

DEBUG_ENV = "ANIMATEX_DEBUG"
EXIT_RUNTIME = 1
EXIT_CONFIG = 2

# Project errors that are not ValueError/OSError subclasses, matched by class name along the MRO: the CLI does
# not import every subsystem (data, preprocessing, export) just to catch their errors. The names are the
# contract; tests/test_cli_errors.py checks each one still exists.
RUNTIME_ERROR_NAMES = frozenset(
    {
        "CheckpointIntegrityError",
        "ExportError",
        "ResumeError",
        "MergeError",
        "JournalError",
        "CheckpointSaveError",
        "ElasticRestartError",
        "NonFiniteError",
        "LoaderStallError",
    }
)


# Config classes read in more than one place name their keys from their own section (``sampler.num_steps``); the
# subcommand that read them knows where the user wrote that section.
SECTION_PATHS: dict[str, dict[str, str]] = {
    "fit": {"sampler": "model.sampler", "diffusion": "model.diffusion", "clip": "model.clip", "vae": "model.vae"},
    "prepare": {"clip": "encoders.clip", "vae": "encoders.vae"},
    "animate": {"sampler": "sampling.sampler"},
    "evaluate": {"sampler": "animate.sampling.sampler"},
}
SECTION_PATHS["validate"] = SECTION_PATHS["fit"]


def full_key_paths(message: str, subcommand: str) -> str:
    """``message`` with section-relative keys spelled as ``subcommand``'s user writes them.

    ``fit``: ``sampler.num_steps must be >= 1`` -> ``model.sampler.num_steps must be >= 1``.
    """
    sections = SECTION_PATHS.get(subcommand)
    if not sections:
        return message
    pattern = re.compile(r"(?<![\w./`-])(" + "|".join(sections) + r")\.(?=[a-z_])")
    return pattern.sub(lambda match: sections[match.group(1)] + ".", message)


def debug_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """(debug?, argv without a leading ``--debug``); ``--debug`` also sets ``ANIMATEX_DEBUG`` for child ranks."""
    if argv[:1] == ["--debug"]:
        os.environ[DEBUG_ENV] = "1"  # Lightning's launcher re-executes the command line for the other ranks
        return True, argv[1:]
    return os.environ.get(DEBUG_ENV, "") not in ("", "0"), argv


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).strip().splitlines() if part.strip())


def config_files(argv: list[str]) -> list[Path]:
    files = []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            files.append(Path(argv[i + 1]))
        elif arg.startswith("--config="):
            files.append(Path(arg.split("=", 1)[1]))
    return [f for f in files if f.is_file()]


def _yaml_message(error: Exception, argv: list[str]) -> str:
    mark = getattr(error, "problem_mark", None)
    tag = re.search(r"tag '([^']+)'", str(getattr(error, "problem", "")) or "")
    where = f"{mark.name}:{mark.line + 1}" if mark is not None and not mark.name.startswith("<") else None
    if where is None and tag:  # jsonargparse hands PyYAML a string: find the file that holds the tag
        holder = next((f for f in config_files(argv) if tag.group(1) in f.read_text(errors="replace")), None)
        where = f"{holder}:{mark.line + 1}" if holder is not None and mark is not None else where
    what = f"YAML tag {tag.group(1)!r} is not allowed" if tag else _one_line(getattr(error, "problem", error))
    return f"{what} in {where or 'a YAML input'}; recipes hold plain values only: remove the tag"


def _pickle_message(error: Exception) -> str:
    from animatex_train.training.checkpoint_trust import CheckpointRefusedError

    if isinstance(error, CheckpointRefusedError):
        return _one_line(error)
    detail = next((line.strip() for line in str(error).splitlines() if "GLOBAL" in line), _one_line(error)[:200])
    return (
        f"a checkpoint holds objects other than tensors and plain containers ({detail}); it was not loaded. "
        "Pass a checkpoint written by this project, or --trust_checkpoint true for a local one of your own"
    )


def _os_message(error: OSError) -> str:
    if error.errno == errno.ENOSPC and error.filename and not str(error).startswith("checkpoint"):
        where = Path(error.filename)
        while not where.exists() and where != where.parent:
            where = where.parent
        free = shutil.disk_usage(where).free if where.exists() else 0
        return f"no space left on device writing {error.filename} ({free:,} bytes free there); free space and rerun"
    text = _one_line(error)
    if error.filename and str(error.filename) not in text:
        text += f": {error.filename}"
    return text


def user_error(error: BaseException, argv: list[str]) -> tuple[str, int] | None:
    """(message, exit code) for an expected error; None for a bug (the caller re-raises it)."""
    handled = _classify(error, argv)
    return None if handled is None else (full_key_paths(handled[0], argv[0] if argv else ""), handled[1])


def _classify(error: BaseException, argv: list[str]) -> tuple[str, int] | None:
    names = {cls.__name__ for cls in type(error).__mro__}
    stalled = [note for note in getattr(error, "__notes__", []) if note.startswith("stalled:")]
    if stalled:  # a collective timed out and training/hang_watch.py named the rank that fell behind
        return f"{_one_line(error)[:300]}; {stalled[0]}", EXIT_RUNTIME
    if "ConstructorError" in names or "MarkedYAMLError" in names:
        return _yaml_message(error, argv), EXIT_CONFIG  # type: ignore[arg-type]
    if "ArgumentError" in names:  # argparse/jsonargparse with exit_on_error=False: an unknown or malformed flag
        return _one_line(error), EXIT_CONFIG
    if isinstance(error, pickle.UnpicklingError):
        return _pickle_message(error), EXIT_RUNTIME  # type: ignore[arg-type]
    if isinstance(error, OSError):
        return _os_message(error), EXIT_RUNTIME
    if names & RUNTIME_ERROR_NAMES:
        return _one_line(error), EXIT_RUNTIME
    if isinstance(error, ValueError):  # project errors (ManifestError, SampleError, config checks) are ValueErrors
        return _one_line(error), EXIT_CONFIG
    return None
