"""``animatex-train ablate``: the paper's IPI/EPI ablations (Tables 4-6) as one campaign.

Examples::

    animatex-train ablate list                                    # the 19 ablations and what each changes
    animatex-train ablate --local --recipe recipes/debug/tiny_cpu.yaml --max_steps 5 --out runs/ablate
    animatex-train ablate --recipe recipes/train/animatex_paper.yaml --cluster_overlay recipes/cluster/x.yaml \\
        --nodes 4 --gpus_per_node 8 --time 24:00:00 --out runs/ablate --only wo_ipi,full [--dry_run]
    animatex-train ablate collate --out runs/ablate               # ablations.md + ablations.csv from the run dirs
    animatex-train ablate --local ... --eval_recipe recipes/eval/cross_driven.yaml --eval_arg=--test_set=a2.jsonl

Every ablation trains ``<recipe> [+ cluster overlay] [+ overlays] + recipes/ablations/<name>.yaml`` into its own
run directory ``<out>/<name>``, in one W&B group. ``--local`` runs them one after another, each in its own
process (a crash of one run is recorded and the campaign goes on; W&B runs, signal handlers and global state
never leak between runs); rerunning the command skips finished runs and resumes the others from their
checkpoints. Without ``--local`` each ablation is submitted as a Slurm job through ``animatex-train submit``.
Arguments after ``--`` go to every run's ``animatex-train fit``. With ``--eval_recipe`` (local campaigns) each
finished run is scored by ``animatex-train evaluate`` into ``<run>/eval`` and the seven-metric table
(``ablation_metrics.md``, the paper's numbers beside ours) is printed with the training table.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from animatex_train.cli.arguments import CommandParser, split_passthrough
from animatex_train.cli.submit import add_slurm_resource_flags
from animatex_train.cli.submit import main as submit_main
from animatex_train.launch.campaign import (
    Ablation,
    CampaignError,
    describe_changes,
    overlay_changes,
    run_overrides,
    select,
    write_json,
)
from animatex_train.launch.collate import STATE_FILE, collate, markdown_table, read_state, write_tables
from animatex_train.launch.local_campaign import run_local, write_metrics_table

CAMPAIGN_FILE = "campaign.json"
_SUBMITTED = re.compile(r"^submitted train: (\d+)$")


def build_parser() -> CommandParser:
    parser = CommandParser(
        "ablate", __doc__.splitlines()[0], epilog="arguments after -- go to every run's animatex-train fit"
    )
    parser.add_argument(
        "action",
        nargs="?",
        choices=("run", "list", "collate"),
        default="run",
        help="run (default): train/submit them; list: print them; collate: tabulate",
    )
    parser.add_argument("--list", action="store_true", help="same as the list action")
    parser.add_argument("--only", help="comma-separated subset, e.g. wo_ipi,wo_epi,full (default: all 19)")
    parser.add_argument("--out", default="ablations", help="campaign folder: one run directory per ablation")
    parser.add_argument("--last_k", type=int, default=5, help="collate: train loss = mean of the last k steps")
    run = parser.add_argument_group("what runs")
    run.add_argument("--recipe", help="the base training recipe")
    run.add_argument("--cluster_overlay", help="hardware overlay layered over the recipe (Slurm: CLUSTER_OVERLAY)")
    run.add_argument("--overlay", action="append", default=[], help="more overlays, layered before the ablation's")
    run.add_argument(
        "--max_steps",
        type=int,
        help="training steps of every run (default: the recipe's); validation runs once, at the end",
    )
    run.add_argument("--group", help="the campaign's W&B group (default: ablations-<out folder name>)")
    run.add_argument("--wandb", choices=("auto", "online", "offline", "disabled"), help="tracking.mode of the runs")
    run.add_argument("--local", action="store_true", help="run here, one after another (default: submit to Slurm)")
    run.add_argument("--verbose", action="store_true", help="--local: show the runs' output (always in ablate.log)")
    run.add_argument(
        "--eval_recipe",
        help="--local: after each run finishes, `animatex-train evaluate` it with this "
        "recipe (recipes/eval/*.yaml) into <run>/eval; collate tabulates the "
        "seven metrics",
    )
    run.add_argument(
        "--eval_arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an argument for every evaluation, e.g. --eval_arg=--tiny --eval_arg=--test_set=t.jsonl (repeatable)",
    )
    slurm = parser.add_argument_group("Slurm (without --local; see animatex-train submit)")
    add_slurm_resource_flags(slurm)
    slurm.add_argument("--command", help="the command the jobs run as animatex-train (see submit)")
    slurm.add_argument("--sbatch", help="the sbatch executable")
    slurm.add_argument("--sbatch_arg", action="append", default=[], metavar="OPTION")
    slurm.add_argument("--log_dir", default="slurm-logs")
    slurm.add_argument("--dry_run", action="store_true", help="print the sbatch commands instead of submitting")
    slurm.add_argument("--resubmit", action="store_true", help="submit again ablations already submitted")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``animatex-train ablate``; returns 0 when every selected ablation finished (or was submitted)."""
    own, passthrough = split_passthrough(argv)
    args = build_parser().parse_args(own)
    console = Console()
    try:
        ablations = select(args.only)
        if args.list or args.action == "list":
            return _print_list(console, ablations)
        out = Path(args.out).resolve()
        if args.action == "collate":
            rows = collate(out, ablations, args.last_k)
            write_tables(out, rows, args.last_k)
            print(markdown_table(rows, args.last_k), end="")
            print("\n" + write_metrics_table(out, ablations), end="")
            return 0
        configs = _configs(args, ablations)
        if args.eval_recipe and not args.local:
            raise CampaignError(
                "--eval_recipe evaluates runs on this machine, with --local only; on Slurm, when "
                "the jobs are done, run `animatex-train evaluate --recipe R --checkpoint "
                "<out>/<ablation>/checkpoints -o <out>/<ablation>/eval` per run (or a job array "
                "of it), then `animatex-train ablate collate`"
            )
        if args.eval_recipe and not Path(args.eval_recipe).is_file():
            raise CampaignError(
                f"--eval_recipe: no such file {args.eval_recipe}; expected an evaluation recipe, "
                "e.g. recipes/eval/cross_driven.yaml"
            )
    except CampaignError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    group = _campaign_group(out, args)
    if args.local:
        return run_local(args, ablations, configs, out, group, passthrough, console)
    return submit_slurm(args, ablations, out, group, passthrough, console)


def _print_list(console: Console, ablations: list[Ablation]) -> int:
    table = Table(title="Animate-X ablations (paper Tables 4-6): recipes/ablations/<name>.yaml")
    for header in ("ablation", "paper tables", "paper row", "what it changes (over the base recipe)"):
        table.add_column(header, overflow="fold")
    for a in ablations:
        table.add_row(a.name, a.tables, a.row, describe_changes(overlay_changes(a)))
    console.print(table)
    return 0


def _configs(args: argparse.Namespace, ablations: list[Ablation]) -> list[str]:
    """The ``--config`` files every run layers under its ablation overlay, checked to exist."""
    if not args.recipe:
        raise CampaignError("give the base recipe: --recipe recipes/<...>.yaml")
    configs = [args.recipe, *([args.cluster_overlay] if args.cluster_overlay else []), *args.overlay]
    missing = [c for c in configs if not Path(c).is_file()]
    if missing:
        raise CampaignError(f"no such recipe/overlay file: {', '.join(missing)}")
    for a in ablations:
        overlay_changes(a)  # a missing or malformed ablation overlay fails before anything runs
    return configs


def _campaign_group(out: Path, args: argparse.Namespace) -> str:
    """The W&B group: ``--group``, else the one this campaign folder already used, else ``ablations-<folder>``."""
    path = out / CAMPAIGN_FILE
    stored = json.loads(path.read_text()) if path.is_file() else {}
    group = args.group or stored.get("group") or f"ablations-{out.name}"
    if not args.dry_run:  # a dry run leaves no trace
        write_json(
            path,
            {
                **stored,
                "group": group,
                "recipe": args.recipe,
                "overlays": args.overlay,
                "cluster_overlay": args.cluster_overlay,
                "max_steps": args.max_steps,
            },
        )
    return group


# ---------------------------------------------------------------------- Slurm


def submit_slurm(
    args: argparse.Namespace, ablations: list[Ablation], out: Path, group: str, passthrough: list[str], console: Console
) -> int:
    """Submit one ``slurm/train.sbatch`` job per ablation through ``animatex-train submit``.

    Finished ablations (and, without ``--resubmit``, already submitted ones, which may still be queued) are
    skipped, so two jobs never share a run directory.
    """
    resources = []
    for flag in (
        "nodes",
        "gpus_per_node",
        "ntasks_per_node",
        "cpus_per_task",
        "time",
        "partition",
        "account",
        "qos",
        "command",
        "log_dir",
        "sbatch",
    ):
        if getattr(args, flag) is not None:
            resources += [f"--{flag}", str(getattr(args, flag))]
    resources += [f"--sbatch_arg={a}" for a in args.sbatch_arg]
    code = 0
    rows = {r.name: r for r in collate(out, ablations)}
    for ablation in ablations:
        run_dir = out / ablation.name
        state = read_state(run_dir)
        if rows[ablation.name].status == "finished" or (state.get("status") == "submitted" and not args.resubmit):
            console.print(
                f"skip {ablation.name}: {rows[ablation.name].status}"
                + (f" (job {state['job_id']})" if state.get("job_id") else "")
            )
            continue
        fit_args = [
            *(a for c in args.overlay for a in ("--config", str(Path(c).resolve()))),
            *run_overrides(ablation, run_dir, group, args.max_steps, args.wandb),
            *passthrough,
        ]
        cluster = ["--overlay", args.cluster_overlay] if args.cluster_overlay else []
        argv = [
            "train",
            "--recipe",
            args.recipe,
            *cluster,
            "--run_dir",
            str(run_dir),
            "--job_name",
            f"ablate-{ablation.name}",
            *resources,
            *(["--dry_run"] if args.dry_run else []),
            "--",
            *fit_args,
        ]
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            result = submit_main(argv)
        printed = captured.getvalue()
        if args.dry_run:
            print(printed, end="")
        elif result == 0:
            job_id = next((m.group(1) for ln in printed.splitlines() if (m := _SUBMITTED.match(ln.strip()))), None)
            write_json(
                run_dir / STATE_FILE,
                {**state, "name": ablation.name, "status": "submitted", "job_id": job_id, "max_steps": args.max_steps},
            )
            console.print(f"submitted {ablation.name}: job {job_id}")
        if result == 2:  # a bad flag: every other submission would fail the same way
            return 2
        code = code or result
    if not args.dry_run:
        console.print(f"W&B group {group}; when the jobs are done: animatex-train ablate collate --out {out}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
