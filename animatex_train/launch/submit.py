"""Slurm submission of ``slurm/*.sbatch``: the sbatch command lines ``animatex-train submit`` (``cli/submit.py``)
runs, built from its flags. sbatch runs as an argument list, never through a shell; every value that reaches it is
checked first.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

import animatex_train

SCRIPTS = {"train": "train.sbatch", "prepare": "prepare.sbatch", "eval": "eval.sbatch"}
_NAME = re.compile(r"[A-Za-z0-9_.+-]{1,128}")
# Slurm's --time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S.
_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d{1,2}))?(?::(\d{1,2}))?")
JOB_ID = re.compile(r"[0-9]+")


class SubmitError(ValueError):
    """A flag that cannot make a valid submission; the message names it and says what to pass."""


def _seconds(limit: str) -> int:
    match = _TIME.fullmatch(limit)
    if not match:
        raise SubmitError(f"--time {limit!r}: use M, M:S, H:M:S, D-H, D-H:M or D-H:M:S (e.g. 24:00:00, 2-00:00:00)")
    days, first, second, third = (int(g) if g else None for g in match.groups())
    if days is not None:  # D-H[:M[:S]]
        return days * 86400 + first * 3600 + (second or 0) * 60 + (third or 0)
    if third is not None:  # H:M:S
        return first * 3600 + second * 60 + third
    return first * 60 + (second or 0)  # M or M:S


def _file(path: str | None, flag: str, job: str) -> str:
    if not path:
        raise SubmitError(f"submit {job}: {flag} is required")
    if not Path(path).is_file():
        raise SubmitError(f"{flag} {path}: no such file")
    return path


def _check(args: argparse.Namespace) -> None:
    for flag in ("partition", "account", "qos", "job_name"):
        value = getattr(args, flag)
        if value is not None and not _NAME.fullmatch(value):
            raise SubmitError(f"--{flag} {value!r}: letters, digits and _.+- only")
    for flag, low in (
        ("nodes", 1),
        ("gpus_per_node", 0),
        ("ntasks_per_node", 1),
        ("cpus_per_task", 1),
        ("signal_lead", 1),
        ("tasks", 1),
    ):
        value = getattr(args, flag)
        if value is not None and value < low:
            raise SubmitError(f"--{flag} must be >= {low}, got {value}")
    if args.time is not None and args.signal_lead is not None and args.signal_lead >= _seconds(args.time):
        raise SubmitError(f"--signal_lead {args.signal_lead} s is not shorter than --time {args.time}")
    if args.time is not None:
        _seconds(args.time)
    if args.job == "train" and args.gpus_per_node == 0 and args.ntasks_per_node is None:
        raise SubmitError("--gpus_per_node 0 (CPU run): give --ntasks_per_node, the number of ranks per node")


def build_commands(args: argparse.Namespace, passthrough: list[str]) -> list[tuple[list[str], dict[str, str]]]:
    """``[(sbatch argv, environment variables), ...]`` to run in order; ``{array}`` marks the array's job id."""
    _check(args)
    clone = Path(animatex_train.__file__).resolve().parents[1]
    script = (Path(args.script_dir) if args.script_dir else clone / "slurm") / SCRIPTS[args.job]
    if not script.is_file():
        raise SubmitError(f"{script} not found: run from a clone of animatex-train or pass --script_dir")
    command = args.command or shlex.join([sys.executable, "-m", "animatex_train"])
    env = {"ANIMATEX_TRAIN": command}
    sbatch = [args.sbatch, "--parsable", "--export=ALL"]  # ALL: the variables below reach the job
    for flag in ("nodes", "cpus_per_task", "time", "partition", "account", "qos", "job_name"):
        if getattr(args, flag) is not None:
            sbatch.append(f"--{flag.replace('_', '-')}={getattr(args, flag)}")
    if args.gpus_per_node is not None:
        sbatch.append(f"--gpus-per-node={args.gpus_per_node}")
    tasks = args.ntasks_per_node or (args.gpus_per_node if args.job != "prepare" and args.gpus_per_node else None)
    if tasks is not None:
        sbatch.append(f"--ntasks-per-node={tasks}")
    sbatch += list(args.sbatch_arg)
    log_dir = Path(args.log_dir)
    if args.job == "train":
        env["RECIPE"] = _file(args.recipe, "--recipe", "train")
        if args.signal_lead is not None:
            sbatch.append(f"--signal=USR1@{args.signal_lead}")
    if args.job == "eval":
        env["RECIPE"] = _file(args.recipe, "--recipe", "eval")
        if args.ckpt:
            env["CKPT"] = _file(args.ckpt, "--ckpt", "eval")
        elif not args.run_dir:
            raise SubmitError("submit eval: give --run_dir (its newest checkpoint is evaluated) or --ckpt")
    if args.overlay:
        env["CLUSTER_OVERLAY"] = _file(args.overlay, "--overlay", args.job)
    if args.run_dir:
        env["RUN_DIR"] = args.run_dir
    if args.job != "prepare":
        return [([*sbatch, f"--output={log_dir}/%x-%j.out", str(script), *passthrough], env)]
    env["PREPARE_CONFIG"] = _file(args.config, "--config", "prepare")
    if args.tasks == 1:
        return [([*sbatch, f"--output={log_dir}/%x-%j.out", str(script), *passthrough], env)]
    array = [*sbatch, f"--array=0-{args.tasks - 1}", f"--output={log_dir}/%x-%A_%a.out", str(script), *passthrough]
    merge = [
        args.sbatch,
        "--parsable",
        "--export=ALL",
        "--dependency=afterok:{array}",
        "--gpus-per-node=0",
        *(f"--{f}={getattr(args, f)}" for f in ("partition", "account", "qos") if getattr(args, f)),
        f"--output={log_dir}/%x-merge-%j.out",
        str(script),
        *passthrough,
        "--stages",
        "merge",
    ]
    return [(array, env), (merge, env)]
