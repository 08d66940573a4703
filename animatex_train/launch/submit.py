"""``animatex-train submit``: fill an sbatch command for ``slurm/*.sbatch`` from flags, and submit it.

Examples::

    animatex-train submit train --recipe recipes/train/stage1.yaml --overlay recipes/cluster/mycluster.yaml \\
        --nodes 4 --gpus-per-node 8 --time 24:00:00 --partition gpu --account proj -- --trainer.max_steps=100000
    animatex-train submit prepare --config prepare.yaml --tasks 16      # array of 16 + dependent merge
    animatex-train submit eval --recipe recipes/train/stage1.yaml --run-dir runs/animatex-train-1234
    animatex-train submit train ... --dry-run                           # print the command only

Resources not given keep the script's ``#SBATCH`` defaults (set by the cluster admin). The recipe, overlay
and run directory travel as environment variables (``RECIPE``, ``CLUSTER_OVERLAY``, ``RUN_DIR``); arguments
after ``--`` go to ``animatex-train fit`` (``validate`` / ``prepare``). sbatch runs as an argument list,
never through a shell; every value that reaches it is checked first.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import animatex_train

SCRIPTS = {"train": "train.sbatch", "prepare": "prepare.sbatch", "eval": "eval.sbatch"}
_NAME = re.compile(r"[A-Za-z0-9_.+-]{1,128}")
# Slurm's --time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S.
_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d{1,2}))?(?::(\d{1,2}))?")
_JOB_ID = re.compile(r"[0-9]+")


class SubmitError(ValueError):
    """A flag that cannot make a valid submission; the message names it and says what to pass."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="animatex-train submit", description=__doc__.splitlines()[0],
                                     epilog="arguments after -- are passed to the job's animatex-train command")
    parser.add_argument("job", choices=sorted(SCRIPTS), help="which slurm/*.sbatch to submit")
    res = parser.add_argument_group("resources (default: the script's #SBATCH lines)")
    res.add_argument("--nodes", type=int, help="nodes (train/eval)")
    res.add_argument("--gpus-per-node", type=int, help="GPUs per node; 0 for a CPU-only run")
    res.add_argument("--ntasks-per-node", type=int, help="ranks per node (default: = --gpus-per-node for train/eval)")
    res.add_argument("--cpus-per-task", type=int)
    res.add_argument("--time", help="time limit: M, H:M:S, D-H, D-H:M:S")
    res.add_argument("--partition")
    res.add_argument("--account")
    res.add_argument("--qos")
    res.add_argument("--job-name")
    res.add_argument("--signal-lead", type=int, help="train: seconds before the limit at which SIGUSR1 is sent")
    res.add_argument("--sbatch-arg", action="append", default=[], metavar="OPTION",
                     help="any other sbatch option, e.g. --sbatch-arg=--exclusive (repeatable)")  # fmt: skip
    run = parser.add_argument_group("what runs")
    run.add_argument("--recipe", help="train/eval: the recipe (RECIPE)")
    run.add_argument("--overlay", help="train/eval: the cluster overlay layered over it (CLUSTER_OVERLAY)")
    run.add_argument("--run-dir", help="train: where the run lives (RUN_DIR; reuse it to resume); eval: the run")
    run.add_argument("--ckpt", help="eval: a checkpoint's state.ckpt (default: the run's newest complete one)")
    run.add_argument("--config", help="prepare: the prepare YAML (PREPARE_CONFIG)")
    run.add_argument("--tasks", type=int, default=1, help="prepare: array tasks (ranks); >1 adds a merge job")
    run.add_argument("--command", help="the command the job runs as animatex-train (default: this Python, "
                                       "`python -m animatex_train`)")  # fmt: skip
    run.add_argument("--log-dir", default="slurm-logs", help="directory of the job logs (created)")
    run.add_argument("--script-dir", help="directory of the sbatch scripts (default: the clone's slurm/)")
    run.add_argument("--sbatch", default="sbatch", help="the sbatch executable")
    run.add_argument("--dry-run", action="store_true", help="print the command(s) instead of submitting")
    return parser


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
            raise SubmitError(f"--{flag.replace('_', '-')} {value!r}: letters, digits and _.+- only")
    for flag, low in (("nodes", 1), ("gpus_per_node", 0), ("ntasks_per_node", 1), ("cpus_per_task", 1),
                      ("signal_lead", 1), ("tasks", 1)):  # fmt: skip
        value = getattr(args, flag)
        if value is not None and value < low:
            raise SubmitError(f"--{flag.replace('_', '-')} must be >= {low}, got {value}")
    if args.time is not None and args.signal_lead is not None and args.signal_lead >= _seconds(args.time):
        raise SubmitError(f"--signal-lead {args.signal_lead} s is not shorter than --time {args.time}")
    if args.time is not None:
        _seconds(args.time)
    if args.job == "train" and args.gpus_per_node == 0 and args.ntasks_per_node is None:
        raise SubmitError("--gpus-per-node 0 (CPU run): give --ntasks-per-node, the number of ranks per node")


def build_commands(args: argparse.Namespace, passthrough: list[str]) -> list[tuple[list[str], dict[str, str]]]:
    """``[(sbatch argv, environment variables), ...]`` to run in order; ``{array}`` marks the array's job id."""
    _check(args)
    clone = Path(animatex_train.__file__).resolve().parents[1]
    script = (Path(args.script_dir) if args.script_dir else clone / "slurm") / SCRIPTS[args.job]
    if not script.is_file():
        raise SubmitError(f"{script} not found: run from a clone of animatex-train or pass --script-dir")
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
            raise SubmitError("submit eval: give --run-dir (its newest checkpoint is evaluated) or --ckpt")
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
    merge = [args.sbatch, "--parsable", "--export=ALL", "--dependency=afterok:{array}", "--gpus-per-node=0",
             *(f"--{f}={getattr(args, f)}" for f in ("partition", "account", "qos") if getattr(args, f)),
             f"--output={log_dir}/%x-merge-%j.out", str(script), *passthrough, "--stages", "merge"]  # fmt: skip
    return [(array, env), (merge, env)]


def submit_main(argv: list[str] | None = None) -> int:
    """``animatex-train submit``; prints one ``submitted <job>: <id>`` line per job (or the commands)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = _parser().parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    try:
        commands = build_commands(args, passthrough)
    except SubmitError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        for sbatch, env in commands:
            sbatch = [a.replace("{array}", "<array job id>") for a in sbatch]
            print(shlex.join(["env", *(f"{k}={v}" for k, v in env.items()), *sbatch]))
        return 0
    if shutil.which(args.sbatch) is None:
        print(f"error: {args.sbatch} not found; submit from a Slurm login node, or print the command with --dry-run",
              file=sys.stderr)  # fmt: skip
        return 2
    Path(args.log_dir).mkdir(parents=True, exist_ok=True)
    previous = None
    for sbatch, env in commands:
        sbatch = [a.replace("{array}", previous) if previous else a for a in sbatch]
        result = subprocess.run(sbatch, env={**os.environ, **env}, capture_output=True, text=True, check=False)
        job_id = result.stdout.strip().split(";")[0]
        if result.returncode != 0 or not _JOB_ID.fullmatch(job_id):
            print(f"error: {shlex.join(sbatch)} failed ({result.returncode}): {result.stderr.strip()}", file=sys.stderr)
            return 1
        print(f"submitted {args.job}: {job_id}")
        previous = job_id
    return 0
