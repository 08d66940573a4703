"""Data preparation, the Python API of ``animatex-train prepare`` (``cli/prepare.py``): ``PrepareConfig`` from
flags or a YAML file, and the run of its stages for this process's rank. Rerunning resumes where it stopped.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser
from rich.console import Console

from animatex_train.data.format.manifest import DatasetManifest
from animatex_train.preprocess.config import PrepareConfig
from animatex_train.preprocess.inputs import discover_videos, resolve_rank
from animatex_train.preprocess.merge import merge_dataset

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
        log.info(
            "rank %d/%d: %d videos in the input, %d rejected while listing",
            rank,
            world_size,
            len(videos),
            len(listing_rejects),
        )
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
        log.info(
            "wrote %s: %d shards, %d clips, %d rejects",
            output_dir / "manifest.json",
            len(manifest.shards),
            manifest.num_samples,
            manifest.num_rejects,
        )
        return manifest
    if "shards" in stages and world_size > 1:
        log.info("rank %d done; when every rank has finished, run the same command with --stages merge", rank)
    return None


def config_parser() -> ArgumentParser:
    """The ``prepare`` settings as jsonargparse flags: one for every ``PrepareConfig`` field, plus ``--config``."""
    parser = ArgumentParser(
        prog="animatex-train prepare",
        description="Videos -> keypoints, CLIP features, VAE latents -> WebDataset shards (resumable, multi-rank).",
        exit_on_error=False,
        allow_abbrev=False,  # `--clips.num_frame` must not silently mean --clips.num_frames
    )
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of the options below")
    parser.add_class_arguments(PrepareConfig, None)
    return parser


def parse_prepare_config(argv: list[str]) -> PrepareConfig:
    """``PrepareConfig`` from ``prepare`` flags (``--config file.yaml`` and dotted overrides, ``--world_size``).

    Raises:
        ValueError, TypeError, InputError: a flag or value jsonargparse or ``PrepareConfig`` rejects.
    """
    parser = config_parser()
    namespace = parser.parse_args(argv)
    values = parser.instantiate(namespace)
    return PrepareConfig(**{k: v for k, v in vars(values).items() if k != "config"})
