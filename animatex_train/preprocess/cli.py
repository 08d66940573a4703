"""``animatex-train prepare``: the command line and the Python API of data preparation.

Examples::

    # one process: everything, then the manifest
    animatex-train prepare --config prepare.yaml
    # 8 ranks (torchrun sets RANK/WORLD_SIZE; a Slurm array works the same), then merge once
    torchrun --nproc_per_node 8 -m animatex_train.preprocess.cli --config prepare.yaml
    animatex-train prepare --config prepare.yaml --stages merge
    # keypoints in another venv (mediapipe), the rest here
    .venv-pose/bin/animatex-train prepare --config prepare.yaml --stages pose --pose.method mediapipe
    animatex-train prepare --config prepare.yaml --pose.method sidecar --pose.sidecar_dir out/poses

Rerunning the same command resumes where it stopped.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import replace
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser
from rich.console import Console

from animatex_train.data.format.manifest import DatasetManifest
from animatex_train.preprocess.config import PrepareConfig
from animatex_train.preprocess.inputs import InputError, discover_videos, resolve_rank
from animatex_train.preprocess.journal import JournalError
from animatex_train.preprocess.merge import MergeError, merge_dataset

log = logging.getLogger(__name__)


def prepare_dataset(config: PrepareConfig) -> DatasetManifest | None:
    """Run the configured stages for this process's rank.

    Args:
        config: the settings.

    Returns:
        The dataset manifest when the merge stage ran (always with one rank and ``stages: all``), else None
        (a rank of a multi-rank run, or ``--stages pose``).

    Raises:
        InputError: bad input spec or metadata.
        JournalError: ``output_dir`` holds a run with other settings.
        MergeError: the merge found unfinished ranks or missing shards.
    """
    rank, world_size = resolve_rank(config.rank, config.world_size)
    stages = config.stage_list(world_size)
    console = Console(stderr=True)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if "pose" in stages or "shards" in stages:
        videos, listing_rejects = discover_videos(config.videos, config.metadata)
        log.info("rank %d/%d: %d videos in the input, %d rejected while listing", rank, world_size, len(videos),
                 len(listing_rejects))  # fmt: skip
        if "pose" in stages:
            from animatex_train.preprocess.pose_stage import pose_folder, run_pose_stage

            run_pose_stage(config, rank, world_size, videos, console)
            # With both stages, the shards read the sidecars just written instead of estimating again.
            pose = replace(config.pose, method="sidecar", sidecar_dir=str(pose_folder(config)))
            config = replace(config, pose=pose, stages="shards")
        if "shards" in stages:
            from animatex_train.preprocess.shards_stage import run_shards_stage

            run_shards_stage(config, rank, world_size, videos, listing_rejects, console)
    if "merge" in stages:
        if rank != 0:
            log.info("rank %d: the merge runs on rank 0 only", rank)
            return None
        manifest = merge_dataset(output_dir, verify_hashes=config.shards.verify_hashes)
        log.info("wrote %s: %d shards, %d clips, %d rejects", output_dir / "manifest.json", len(manifest.shards),
                 manifest.num_samples, manifest.num_rejects)  # fmt: skip
        return manifest
    if "shards" in stages and world_size > 1:
        log.info("rank %d done; when every rank has finished, run the same command with --stages merge", rank)
    return None


def build_parser() -> ArgumentParser:
    """The ``prepare`` argument parser: flags for every ``PrepareConfig`` field, plus ``--config``."""
    parser = ArgumentParser(
        prog="animatex-train prepare",
        description="Videos -> keypoints, CLIP features, VAE latents -> WebDataset shards (resumable, multi-rank).",
        exit_on_error=False,
        allow_abbrev=False,  # `--clips.num_frame` must not silently mean --clips.num_frames
    )
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of the options below")
    parser.add_class_arguments(PrepareConfig, None)
    return parser


def _normalise_flags(argv: list[str]) -> list[str]:
    """Accept ``--world-size`` for ``--world_size`` (and any dashed flag name); values are left alone."""
    out = []
    for arg in argv:
        if arg.startswith("--") and "-" in arg[2:].split("=", 1)[0]:
            name, sep, value = arg[2:].partition("=")
            arg = "--" + name.replace("-", "_") + sep + value
        out.append(arg)
    return out


def prepare_main(argv: list[str] | None = None) -> int:
    """Entry point of ``animatex-train prepare``.

    Args:
        argv: arguments without the program name; None = ``sys.argv[1:]``.

    Returns:
        0 on success (rejected videos do not count as failure; see the summary and ``rejects.jsonl``), 2 on a
        configuration or input error, 1 when the run cannot complete (journal or merge problem).
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    try:
        namespace = parser.parse_args(_normalise_flags(list(sys.argv[1:] if argv is None else argv)))
        values = parser.instantiate(namespace)
        config = PrepareConfig(**{k: v for k, v in vars(values).items() if k != "config"})
    except (ValueError, TypeError, InputError) as error:  # jsonargparse errors and our __post_init__ checks
        print(f"animatex-train prepare: error: {error}", file=sys.stderr)
        return 2
    try:
        prepare_dataset(config)
    except InputError as error:
        print(f"animatex-train prepare: error: {error}", file=sys.stderr)
        return 2
    except (JournalError, MergeError) as error:
        print(f"animatex-train prepare: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(prepare_main())
