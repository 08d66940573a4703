"""``run_evaluation``: generate every test video through the ``animate`` pipeline (the same code as the command),
score it with the metric suite, and write the report. Each rank generates its share of the videos; the scores and
feature statistics are gathered before the distances are computed, so N processes give the numbers of one."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist
from PIL import Image
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from animatex_train.eval.metrics.suite import MetricSuite, WeightPaths
from animatex_train.eval.recipe import EvalRecipe
from animatex_train.eval.testset import (
    TestVideo,
    load_pose,
    read_test_set,
    video_frame,
    video_info,
    write_official_pkl,
)


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size (torch.distributed if initialised, else 0 and 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def resize_frames(frames: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """``(f, H, W, 3)`` uint8 to ``size`` = ``(height, width)`` with PIL bicubic (unchanged when equal or None)."""
    if size is None or tuple(frames.shape[1:3]) == tuple(size):
        return frames
    return np.stack(
        [np.asarray(Image.fromarray(f).resize((size[1], size[0]), Image.Resampling.BICUBIC)) for f in frames]
    )


@dataclasses.dataclass
class Job:
    """One generation: the character (reference + ground truth) and what drives it."""

    video: TestVideo
    ref: Path
    driving: Path
    pkl: Path | None
    partner: str | None
    has_ground_truth: bool


def _poses_pkl(video: TestVideo, work: Path) -> Path | None:
    """The video's keypoints as the official pkl ``animate --pkl`` reads (None: DWPose runs on the video)."""
    if video.pkl is not None:
        return video.pkl
    if video.keypoints is None:
        return None
    _, _, fps = video_info(video.video)
    return write_official_pkl(load_pose(video), fps, work / "poses" / f"{video.id}.pkl")


def make_job(recipe: EvalRecipe, videos: list[TestVideo], index: int, work: Path) -> Job:
    """The reference, driving video and poses of test video ``index`` under the recipe's protocol."""
    video = videos[index]
    ref = video.ref
    if ref is None:  # DisCo: the reference is the video's first frame (reference_frame)
        ref = work / "refs" / f"{video.id}.png"
        ref.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(video_frame(video.video, recipe.reference_frame)).save(ref)
    if recipe.protocol == "self_driven":
        return Job(video, ref, video.video, _poses_pkl(video, work), None, True)
    partner = videos[(index + recipe.partner_offset) % len(videos)]
    if recipe.protocol == "cross_driven":
        # A2Bench's rescaled pose: the character's own motion with the partner's body proportions (EPI
        # realignment), generated over the character's own frames, which stay the ground truth.
        from animatex_train.data.epi.realign import realign_to_anchor

        realigned = realign_to_anchor(load_pose(video), load_pose(partner), name=f"test video {video.id}")
        _, _, fps = video_info(video.video)
        pkl = write_official_pkl(realigned, fps, work / "poses" / f"{video.id}.to_{partner.id}.pkl")
        return Job(video, ref, video.video, pkl, partner.id, True)
    return Job(video, ref, partner.video, _poses_pkl(partner, work), partner.id, False)


def generation_settings(recipe: EvalRecipe, settings: Any) -> Any:
    """The ``animate`` settings with the recipe's overrides and its clip (frames from the start, stride)."""
    settings = settings.with_overrides(dict(recipe.animate))
    inputs = dataclasses.replace(
        settings.inputs, frames=recipe.num_frames, stride=recipe.stride, start=0.0, target_fps=None
    )
    output = dataclasses.replace(settings.output, audio=False, progress=False)
    return dataclasses.replace(settings, inputs=inputs, output=output)


def run_evaluation(
    recipe: EvalRecipe, settings: Any, weights: WeightPaths, out: str | Path, progress: bool = True
) -> dict[str, Any]:
    """Generate and score the recipe's test set; rank 0 writes the report into ``out``.

    Args:
        recipe: the protocol.
        settings: ``AnimateSettings`` (weights and generation options; the recipe's ``animate`` overrides apply).
        weights: the metric networks' files.
        out: report folder (``metrics.json``, ``metrics.md``, ``videos/``, ``work/``).
        progress: show progress bars with ETA.

    Returns:
        The report (the content of ``metrics.json``), on every rank.
    """
    from animatex_train.inference.pipeline import animate, models_for

    rank, world = rank_and_world()
    out = Path(out)
    work = out / "work"
    videos = read_test_set(recipe.test_set, recipe.split, recipe.max_videos)
    settings = generation_settings(recipe, settings)
    started = time.perf_counter()
    models = models_for(settings)
    suite = MetricSuite(recipe.metrics, weights)
    rows: list[dict[str, Any]] = []
    mine = [i for i in range(len(videos)) if i % world == rank]
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress or rank != 0) as bar:
        task = bar.add_task(f"generate + score ({recipe.protocol}, rank {rank}/{world})", total=len(mine))
        for index in mine:
            job = make_job(recipe, videos, index, work)
            pkl = str(job.pkl) if job.pkl else None
            job_settings = dataclasses.replace(settings, inputs=dataclasses.replace(settings.inputs, pkl=pkl))
            mark = time.perf_counter()
            result = animate(job.ref, job.driving, job_settings, models=models)
            seconds_generate = time.perf_counter() - mark
            gen = resize_frames(result.frames, recipe.resolution_px)
            real = resize_frames(result.clip.source_frames, recipe.resolution_px)
            mark = time.perf_counter()
            if job.has_ground_truth:
                suite.add_video_pair(job.video.id, list(gen), list(real))
            else:
                suite.add_video("gen", list(gen))
                suite.add_video("real", list(real))
            row = {
                "id": job.video.id,
                "video": str(job.video.video),
                "partner": job.partner,
                "frames": int(len(gen)),
                "seconds_generate": seconds_generate,
                "seconds_score": time.perf_counter() - mark,
                "warnings": result.meta["warnings"],
                "checkpoint_sha256": result.meta["checkpoint"]["sha256"],
            }
            if recipe.save_videos:
                from animatex_train.data.format.video import side_by_side, write_mp4

                columns_ = (gen, real) if job.has_ground_truth else (gen,)
                row["mp4"] = str(
                    write_mp4(out / "videos" / f"{job.video.id}.mp4", side_by_side(*columns_), fps=float(result.fps))
                )
            rows.append(row)
            bar.advance(task)
    scores = suite.compute()
    rows = _gather_rows(rows)
    for row in rows:
        row.update(scores["per_video"].get(row["id"], {}))
    report = {
        "metrics": scores["metrics"],
        "per_video": rows,
        "counts": {**scores["counts"], "videos": len(videos), "ranks": world},
        "protocol": recipe.to_dict(),
        "generation": settings.to_dict(),
        "checkpoint": {
            "path": models.denoiser.source,
            "kind": models.denoiser.kind,
            "weights": models.denoiser.weights,
            "sha256": models.denoiser.sha256,
        },
        "metric_weights": scores["weights"],
        "seconds": time.perf_counter() - started,
    }
    if rank == 0:
        from animatex_train.eval.report import write_report

        write_report(report, out)
    return report


def _gather_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rank, world = rank_and_world()
    if world == 1:
        return rows
    gathered: list[list | None] = [None] * world
    dist.all_gather_object(gathered, rows)
    return sorted((row for part in gathered for row in part), key=lambda row: row["id"])


def init_distributed_from_env() -> bool:
    """torchrun's environment -> a gloo (CPU) or NCCL process group; False when not launched distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    import torch

    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True
