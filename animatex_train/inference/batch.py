"""``--manifest jobs.jsonl``: many animations, split across ranks, resumable, failures recorded per job.

One JSON object per line: ``ref``, ``video`` (paths, relative to the manifest's folder), optional ``seed``,
``id`` (the output's name) and ``output``, and any per-job override (a flag name such as ``frames`` or
``guidance``, or a dotted settings key such as ``inputs.frames``). Job i belongs to rank ``i % world_size``
(``RANK``/``WORLD_SIZE`` from torchrun, or ``SLURM_PROCID``/``SLURM_NTASKS``): every job is rendered once, by
one rank; the networks are loaded once per rank. A job whose output is complete (``outputs.is_complete``) is
skipped, so rerunning the command finishes what is left. A failing job writes ``<id>.failed.json`` with its
reason and the rank carries on with the next one.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from animatex_train.inference import outputs
from animatex_train.inference.settings import AnimateSettings

log = logging.getLogger(__name__)
RESERVED = ("ref", "video", "seed", "id", "output")


@dataclass
class Job:
    """One line of the manifest.

    Attributes:
        index: line number among the jobs (0-based), which decides the rank.
        id: output name (``<id>.mp4``).
        ref: reference image.
        video: driving video.
        seed: None = the command's ``--seed``.
        output: where the mp4 goes.
        overrides: settings overrides as dotted keys.
    """

    index: int
    id: str
    ref: Path
    video: Path
    seed: int | None
    output: Path
    overrides: dict[str, Any] = field(default_factory=dict)


def resolve_rank() -> tuple[int, int]:
    """(rank, world size) from torchrun's or Slurm's environment; (0, 1) otherwise."""
    for rank_key, world_key in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if rank_key in os.environ and world_key in os.environ:
            rank, world = int(os.environ[rank_key]), int(os.environ[world_key])
            if not 0 <= rank < world:
                raise ValueError(f"{rank_key}={rank} is outside [0, {world_key}={world})")
            return rank, world
    return 0, 1


def read_manifest(path: str | Path, out_dir: str | Path, aliases: dict[str, str]) -> list[Job]:
    """Parse ``jobs.jsonl`` (see the module doc). ``aliases`` maps flag-style keys to dotted settings keys.

    Raises:
        ValueError: naming the line and the problem.
    """
    path, out_dir = Path(path), Path(out_dir)
    if not path.is_file():
        raise FileNotFoundError(f"--manifest: {path} does not exist")
    jobs: list[Job] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"--manifest {path} line {number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not JSON ({error})") from error
        if not isinstance(entry, dict) or "ref" not in entry or "video" not in entry:
            raise ValueError(f"{where}: expected an object with at least 'ref' and 'video'")
        ref, video = (
            Path(entry[k]) if Path(entry[k]).is_absolute() else path.parent / entry[k] for k in ("ref", "video")
        )
        seed = None if entry.get("seed") is None else int(entry["seed"])
        job_id = str(entry.get("id") or f"{ref.stem}_{video.stem}" + (f"_s{seed}" if seed is not None else ""))
        if job_id in seen:
            job_id = f"{job_id}_{len(jobs)}"
        seen.add(job_id)
        overrides = {}
        for key, value in entry.items():
            if key in RESERVED:
                continue
            dotted = aliases.get(key.replace("-", "_"), key)
            if dotted.startswith("weights."):
                raise ValueError(f"{where}: '{key}' cannot change per job (the networks are loaded once per rank)")
            overrides[dotted] = value
        output = Path(entry["output"]) if entry.get("output") else out_dir / f"{job_id}.mp4"
        jobs.append(
            Job(len(jobs), job_id, ref, video, seed, output if output.is_absolute() else out_dir / output, overrides)
        )
    return jobs


def run_manifest(jobs: list[Job], settings: AnimateSettings, out_dir: str | Path) -> dict[str, list[str]]:
    """Render this rank's jobs; returns ``{"done": [...], "skipped": [...], "failed": [...]}`` (job ids)."""
    from animatex_train.inference.pipeline import animate, models_for

    rank, world = resolve_rank()
    mine = [job for job in jobs if job.index % world == rank]
    summary: dict[str, list[str]] = {"done": [], "skipped": [], "failed": []}
    todo = [job for job in mine if not outputs.is_complete(job.output)]
    summary["skipped"] = [job.id for job in mine if job not in todo]
    log.info(
        "rank %d/%d: %d of %d jobs are mine, %d already complete",
        rank,
        world,
        len(mine),
        len(jobs),
        len(summary["skipped"]),
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    journal = out_dir / f"animate-rank{rank}.jsonl"
    models = models_for(settings) if todo else None
    for job in todo:
        started = time.perf_counter()
        failure = job.output.with_name(job.output.stem + ".failed.json")
        try:
            job_settings = settings.with_overrides(job.overrides) if job.overrides else settings
            result = animate(job.ref, job.video, job_settings, models=models, output=job.output, seed=job.seed)
            result.meta.update(job=job.id, rank=rank, world_size=world)
            outputs.write_meta(job.output, result.meta)
            failure.unlink(missing_ok=True)
            status, reason = "done", None
        except Exception as error:  # noqa: BLE001 - one job's failure is recorded, the others still run
            status, reason = "failed", f"{type(error).__name__}: {error}"
            log.error("job %s failed: %s", job.id, reason)
            failure.parent.mkdir(parents=True, exist_ok=True)
            failure.write_text(
                json.dumps(
                    {
                        "job": job.id,
                        "ref": str(job.ref),
                        "video": str(job.video),
                        "rank": rank,
                        "reason": reason,
                        "traceback": traceback.format_exc(),
                    },
                    indent=2,
                )
            )
        summary[status].append(job.id)
        with journal.open("a") as handle:
            handle.write(
                json.dumps(
                    {
                        "job": job.id,
                        "status": status,
                        "reason": reason,
                        "rank": rank,
                        "seconds": round(time.perf_counter() - started, 3),
                    }
                )
                + "\n"
            )
    return summary
