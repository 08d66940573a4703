"""``animatex-train demo``: the whole pipeline, tiny, on CPU, in a few minutes, with no download.

1. render the embedded synthetic dataset (``data/embedded_dataset.yaml``: human, teapot and fox
   characters dancing, with ground-truth keypoints);
2. prepare it into shards (``data/embedded_prepare.yaml``: tiny random-weight VAE and CLIP);
3. build the explicit pose indicator's anchor pool from the training shards;
4. train the real Animate-X denoiser at tiny width (``recipes/debug/tiny_cpu.yaml``), which also
   validates and renders a sample clip, and checkpoints (crash-safe; rerunning resumes);
5. sample a clip from the saved checkpoint: ``sample.mp4`` and ``sample.png`` (reference | pose | generated).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from animatex_train.cli.arguments import CommandParser
from animatex_train.embedded_dataset import build_embedded_dataset, embedded_dataset_overrides, repo_file


def build_parser() -> CommandParser:
    parser = CommandParser("demo", __doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_run", help="output folder (default: demo_run)")
    parser.add_argument("--max_steps", type=int, default=40, help="training steps (default: 40)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--wandb",
        choices=("offline", "disabled"),
        default="offline",
        help="W&B mode when no API key is set (offline writes the run locally)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the five stages and print a summary; 0 on success."""
    args = build_parser().parse_args(argv)
    # One handler for our warnings; Lightning prints its own messages through its own handler.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lightning").propagate = False
    console = Console()
    out = Path(args.out).resolve()
    timings: dict[str, float] = {}

    data_dir = out / "data"
    build_embedded_dataset(out / "videos", data_dir, seed=args.seed, console=console, timings=timings, num_stages=5)

    start = time.perf_counter()
    console.rule("[bold]4/5 train (tiny denoiser, CPU)")
    run_dir = out / "train"
    recipe = repo_file("recipes/debug/tiny_cpu.yaml")
    overrides = [
        f"--trainer.default_root_dir={run_dir}",
        f"--trainer.max_steps={args.max_steps}",
        f"--trainer.val_check_interval={args.max_steps}",
        f"--seed_everything={args.seed}",
        *embedded_dataset_overrides(data_dir),
        "--trainer.callbacks+=animatex_train.training.ledger.SampleLedger",
        f"--tracking.mode={args.wandb}",
    ]
    from animatex_train.cli.lightning import AnimateXCLI

    # The fit's arguments are given here, not on the command line (which says `demo`): Lightning warns when it sees
    # both, so it sees only the program name while the CLI parses.
    own_argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        cli = AnimateXCLI(args=["fit", "--config", str(recipe), *overrides])
    finally:
        sys.argv = own_argv
    timings["train"] = time.perf_counter() - start

    start = time.perf_counter()
    console.rule("[bold]5/5 sample from the checkpoint")
    from animatex_train.training.checkpoint import find_resume_checkpoint

    checkpoint = find_resume_checkpoint(run_dir / "checkpoints")
    sample_mp4, sample_png = _sample_from_checkpoint(cli, checkpoint, out)
    timings["sample"] = time.perf_counter() - start
    _summary(console, out, run_dir, checkpoint, sample_mp4, sample_png, timings)
    return 0


def _sample_from_checkpoint(cli, checkpoint: Path, out: Path) -> tuple[Path, Path]:
    """Load the saved weights into a fresh system and render the first validation clip."""
    import torch

    from animatex_train.data.format.video import side_by_side, write_mp4, write_strip
    from animatex_train.system import AnimateXSystem

    config = cli.model.config
    system = AnimateXSystem(
        **{name: getattr(config, name) for name in vars(config)},
        seed=cli.model.seed,
        empty_prompt_cache=cli.model.empty_prompt_cache,
    )
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    system.load_state_dict(state)
    system.setup("predict")
    system.eval()
    batch = next(iter(cli.datamodule.val_dataloader()))
    frames = system(batch, num_samples=1, progress=True)[0].numpy()
    pose = batch.pose_images[0, :, 1:].permute(1, 2, 3, 0).numpy()
    ref = np.repeat(batch.ref_image[0].permute(1, 2, 0).numpy()[None], pose.shape[0], axis=0)
    mp4 = write_mp4(out / "sample.mp4", side_by_side(ref, pose, frames), fps=8)
    png = write_strip(out / "sample.png", [ref, pose, frames], num_frames=4)
    return mp4, png


def _summary(console: Console, out: Path, run_dir: Path, checkpoint: Path, mp4: Path, png: Path, timings) -> None:
    from animatex_train.training.ledger import read_ledger

    ledger = [r for r in read_ledger(run_dir / "ledger") if r["loss"] is not None]
    table = Table(title="animatex-train demo", show_header=False)
    if ledger:
        first, last = ledger[: min(5, len(ledger))], ledger[-min(5, len(ledger)) :]
        table.add_row("loss: first 5 steps (mean)", f"{np.mean([r['loss'] for r in first]):.4f}")
        table.add_row("loss: last 5 steps (mean)", f"{np.mean([r['loss'] for r in last]):.4f}")
    table.add_row("checkpoint", str(checkpoint.parent))
    table.add_row("validation samples", str(run_dir / "samples"))
    table.add_row("sample clip (ref | pose | generated)", str(mp4))
    table.add_row("sample strip", str(png))
    table.add_row("W&B offline run / logs", str(run_dir))
    for stage, seconds in timings.items():
        table.add_row(f"time: {stage}", f"{seconds:.1f} s")
    console.print(table)


if __name__ == "__main__":
    raise SystemExit(main())
