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

import argparse
import logging
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

import animatex_train

REPO_ROOT = Path(animatex_train.__file__).resolve().parents[1]


def _repo_file(relative: str) -> Path:
    path = REPO_ROOT / relative
    if not path.exists():
        raise FileNotFoundError(f"{relative} not found next to the package ({path}); run the demo from a clone")
    return path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="animatex-train demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_run", help="output folder (default: demo_run)")
    parser.add_argument("--max-steps", type=int, default=40, help="training steps (default: 40)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wandb", choices=("offline", "disabled"), default="offline",
                        help="W&B mode when no API key is set (offline writes the run locally)")  # fmt: skip
    return parser


def demo_main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # One handler for our warnings; Lightning prints its own messages through its own handler.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lightning").propagate = False
    console = Console()
    out = Path(args.out).resolve()
    timings: dict[str, float] = {}

    data_dir = out / "data"
    code = build_embedded_dataset(out / "videos", data_dir, seed=args.seed, console=console, timings=timings,
                                  num_stages=5)  # fmt: skip
    if code:
        return code

    start = time.perf_counter()
    console.rule("[bold]4/5 train (tiny denoiser, CPU)")
    run_dir = out / "train"
    recipe = _repo_file("recipes/debug/tiny_cpu.yaml")
    overrides = [
        f"--trainer.default_root_dir={run_dir}", f"--trainer.max_steps={args.max_steps}",
        f"--trainer.val_check_interval={args.max_steps}", f"--seed_everything={args.seed}",
        *embedded_dataset_overrides(data_dir),
        "--trainer.callbacks+=animatex_train.training.ledger.SampleLedger", f"--tracking.mode={args.wandb}",
    ]  # fmt: skip
    from animatex_train.training.lightning_cli import AnimateXCLI

    cli = AnimateXCLI(args=["fit", "--config", str(recipe), *overrides])
    timings["train"] = time.perf_counter() - start

    start = time.perf_counter()
    console.rule("[bold]5/5 sample from the checkpoint")
    from animatex_train.training.checkpoint import find_resume_checkpoint

    checkpoint = find_resume_checkpoint(run_dir / "checkpoints")
    sample_mp4, sample_png = _sample_from_checkpoint(cli, checkpoint, out)
    timings["sample"] = time.perf_counter() - start
    _summary(console, out, run_dir, checkpoint, sample_mp4, sample_png, timings)
    return 0


def build_embedded_dataset(videos_dir: Path, data_dir: Path, seed: int = 0, console: Console | None = None,
                           timings: dict[str, float] | None = None, num_stages: int = 3) -> int:  # fmt: skip
    """Steps 1-3 of the demo: synthetic videos -> prepared shards -> EPI anchor pool; returns an exit code.

    Each step is skipped when its output exists, so a rerun (or a second user, e.g. ``ablate --local``) reuses
    the dataset. Stage titles are numbered ``i/num_stages`` to fit the caller's own progress.

    Args:
        videos_dir: where the synthetic videos and their ``metadata.jsonl`` go.
        data_dir: where the shards, ``manifest.json`` and ``anchors.npy`` go.
        seed: seed of the anchor-pool sampling.
        console: where the stage titles are printed.
        timings: filled with the seconds each stage took.
        num_stages: the total number of stages the caller shows.
    """
    console = console or Console()
    timings = {} if timings is None else timings
    start = time.perf_counter()
    console.rule(f"[bold]1/{num_stages} synthetic dataset")
    if not (videos_dir / "metadata.jsonl").exists():
        from animatex_train.data.synthetic.dataset import SyntheticDatasetConfig, write_synthetic_dataset

        config = SyntheticDatasetConfig.from_yaml(_repo_file("data/embedded_dataset.yaml"))
        write_synthetic_dataset(videos_dir, config)
    timings["synthetic videos"] = time.perf_counter() - start

    start = time.perf_counter()
    console.rule(f"[bold]2/{num_stages} prepare shards")
    if not (data_dir / "manifest.json").exists():
        from animatex_train.preprocess.cli import prepare_main

        prepare_args = ["--config", str(_repo_file("data/embedded_prepare.yaml")), "--videos", str(videos_dir),
                        "--metadata", str(videos_dir / "metadata.jsonl"), "--output_dir", str(data_dir)]  # fmt: skip
        code = prepare_main(prepare_args)
        if code:
            return code
    timings["prepare"] = time.perf_counter() - start

    start = time.perf_counter()
    console.rule(f"[bold]3/{num_stages} anchor pool")
    anchors = data_dir / "anchors.npy"
    if not anchors.exists():
        from animatex_train.data.epi.anchor_pool import anchor_pool_main

        code = anchor_pool_main(["--shards", str(data_dir), "--output", str(anchors), "--num-anchors",
                                 "32", "--seed", str(seed)])  # fmt: skip
        if code:
            return code
    timings["anchor pool"] = time.perf_counter() - start
    return 0


def embedded_dataset_overrides(data_dir: Path) -> list[str]:
    """``fit`` arguments that point the tiny recipe at a dataset built by ``build_embedded_dataset``."""
    return [
        f"--data.train=[{{manifest: {data_dir / 'manifest.json'}}}]",
        f"--data.val=[{{manifest: {data_dir / 'manifest.json'}, split: val}}]",
        f"--data.anchor_pool={data_dir / 'anchors.npy'}",
        f"--model.empty_prompt_cache={data_dir / 'zero_y.safetensors'}",
    ]  # fmt: skip


def _sample_from_checkpoint(cli, checkpoint: Path, out: Path) -> tuple[Path, Path]:
    """Load the saved weights into a fresh system and render the first validation clip."""
    import torch

    from animatex_train.eval.video_io import side_by_side, write_mp4, write_strip
    from animatex_train.system import AnimateXSystem

    config = cli.model.config
    system = AnimateXSystem(**{name: getattr(config, name) for name in vars(config)}, seed=cli.model.seed,
                            empty_prompt_cache=cli.model.empty_prompt_cache)  # fmt: skip
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
