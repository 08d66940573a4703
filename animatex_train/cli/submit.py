"""``animatex-train submit``: fill an sbatch command for ``slurm/*.sbatch`` from flags, and submit it.

Examples::

    animatex-train submit train --recipe recipes/train/stage1.yaml --overlay recipes/cluster/mycluster.yaml \\
        --nodes 4 --gpus_per_node 8 --time 24:00:00 --partition gpu --account proj -- --trainer.max_steps=100000
    animatex-train submit prepare --config prepare.yaml --tasks 16      # array of 16 + dependent merge
    animatex-train submit eval --recipe recipes/train/stage1.yaml --run_dir runs/animatex-train-1234
    animatex-train submit train ... --dry_run                           # print the command only

Resources not given keep the script's ``#SBATCH`` defaults (set by the cluster admin). The recipe, overlay
and run directory travel as environment variables (``RECIPE``, ``CLUSTER_OVERLAY``, ``RUN_DIR``); arguments
after ``--`` go to ``animatex-train fit`` (``validate`` / ``prepare``). sbatch runs as an argument list,
never through a shell; every value that reaches it is checked first.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from animatex_train.cli.arguments import CommandParser, split_passthrough
from animatex_train.launch.submit import JOB_ID, SCRIPTS, SubmitError, build_commands


def add_slurm_resource_flags(group: argparse._ArgumentGroup) -> None:
    """The job resources ``submit`` passes to sbatch (``ablate`` takes them too, for every job it submits)."""
    group.add_argument("--nodes", type=int, help="nodes (train/eval)")
    group.add_argument("--gpus_per_node", type=int, help="GPUs per node; 0 for a CPU-only run")
    group.add_argument("--ntasks_per_node", type=int, help="ranks per node (default: = --gpus_per_node for train/eval)")
    group.add_argument("--cpus_per_task", type=int)
    group.add_argument("--time", help="time limit: M, H:M:S, D-H, D-H:M:S")
    group.add_argument("--partition")
    group.add_argument("--account")
    group.add_argument("--qos")


def build_parser() -> CommandParser:
    parser = CommandParser(
        "submit", __doc__.splitlines()[0], epilog="arguments after -- are passed to the job's animatex-train command"
    )
    parser.add_argument("job", choices=sorted(SCRIPTS), help="which slurm/*.sbatch to submit")
    res = parser.add_argument_group("resources (default: the script's #SBATCH lines)")
    add_slurm_resource_flags(res)
    res.add_argument("--job_name")
    res.add_argument("--signal_lead", type=int, help="train: seconds before the limit at which SIGUSR1 is sent")
    res.add_argument(
        "--sbatch_arg",
        action="append",
        default=[],
        metavar="OPTION",
        help="any other sbatch option, e.g. --sbatch_arg=--exclusive (repeatable)",
    )
    run = parser.add_argument_group("what runs")
    run.add_argument("--recipe", help="train/eval: the recipe (RECIPE)")
    run.add_argument("--overlay", help="train/eval: the cluster overlay layered over it (CLUSTER_OVERLAY)")
    run.add_argument("--run_dir", help="train: where the run lives (RUN_DIR; reuse it to resume); eval: the run")
    run.add_argument("--ckpt", help="eval: a checkpoint's state.ckpt (default: the run's newest complete one)")
    run.add_argument("--config", help="prepare: the prepare YAML (PREPARE_CONFIG)")
    run.add_argument("--tasks", type=int, default=1, help="prepare: array tasks (ranks); >1 adds a merge job")
    run.add_argument(
        "--command",
        help="the command the job runs as animatex-train (default: this Python, `python -m animatex_train`)",
    )
    run.add_argument("--log_dir", default="slurm-logs", help="directory of the job logs (created)")
    run.add_argument("--script_dir", help="directory of the sbatch scripts (default: the clone's slurm/)")
    run.add_argument("--sbatch", default="sbatch", help="the sbatch executable")
    run.add_argument("--dry_run", action="store_true", help="print the command(s) instead of submitting")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``animatex-train submit``; prints one ``submitted <job>: <id>`` line per job (or the commands)."""
    own, passthrough = split_passthrough(argv)
    args = build_parser().parse_args(own)
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
        print(
            f"error: {args.sbatch} not found; submit from a Slurm login node, or print the command with --dry_run",
            file=sys.stderr,
        )
        return 2
    Path(args.log_dir).mkdir(parents=True, exist_ok=True)
    previous = None
    for sbatch, env in commands:
        sbatch = [a.replace("{array}", previous) if previous else a for a in sbatch]
        result = subprocess.run(sbatch, env={**os.environ, **env}, capture_output=True, text=True, check=False)
        job_id = result.stdout.strip().split(";")[0]
        if result.returncode != 0 or not JOB_ID.fullmatch(job_id):
            print(f"error: {shlex.join(sbatch)} failed ({result.returncode}): {result.stderr.strip()}", file=sys.stderr)
            return 1
        print(f"submitted {args.job}: {job_id}")
        previous = job_id
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
