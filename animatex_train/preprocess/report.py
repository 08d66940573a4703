"""Progress bars and the end-of-run summary (videos, clips, frames, rejects by reason, throughput)."""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


@dataclass
class StageSummary:
    """Counters of one stage on one rank.

    Attributes:
        stage: ``pose`` or ``shards``.
        rank: this rank.
        world_size: number of ranks.
        videos: videos in this rank's share.
        skipped: videos already done by an earlier run (resume).
        processed: videos that produced output in this run.
        rejected: videos rejected in this run.
        clips: clips written in this run.
        clip_rejects: clips rejected in this run (inside otherwise good videos).
        frames: frames over the written clips.
        reasons: reject reason -> count (videos and clips).
        seconds: wall time of the stage.
        setup_seconds: part of it spent loading models; throughput is computed without it.
    """

    stage: str
    rank: int
    world_size: int
    videos: int = 0
    skipped: int = 0
    processed: int = 0
    rejected: int = 0
    clips: int = 0
    clip_rejects: int = 0
    frames: int = 0
    reasons: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    setup_seconds: float = 0.0
    _start: float = field(default_factory=time.perf_counter, repr=False)

    def stop(self) -> None:
        self.seconds = time.perf_counter() - self._start

    def to_json(self) -> dict[str, Any]:
        rate = max(self.seconds - self.setup_seconds, 1e-9)
        return {
            "stage": self.stage,
            "rank": self.rank,
            "world_size": self.world_size,
            "videos": self.videos,
            "skipped": self.skipped,
            "processed": self.processed,
            "rejected": self.rejected,
            "clips": self.clips,
            "clip_rejects": self.clip_rejects,
            "frames": self.frames,
            "reasons": dict(sorted(self.reasons.items())),
            "seconds": round(self.seconds, 3),
            "setup_seconds": round(self.setup_seconds, 3),
            "clips_per_s": round(self.clips / rate, 3),
            "frames_per_s": round(self.frames / rate, 3),
        }


def progress_bar(enabled: bool) -> Progress:
    """A rich progress display (a no-op when disabled)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )


def print_summary(summary: StageSummary, console: Console | None = None) -> None:
    """A table of the counters, plus throughput (excluding model loading) per second and per CPU core."""
    console = console or Console(stderr=True)
    data = summary.to_json()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    table = Table(title=f"prepare: stage {summary.stage}, rank {summary.rank}/{summary.world_size}")
    table.add_column("item")
    table.add_column("value", justify="right")
    for key in (
        "videos",
        "skipped",
        "processed",
        "rejected",
        "clips",
        "clip_rejects",
        "frames",
        "seconds",
        "setup_seconds",
    ):
        table.add_row(key, str(data[key]))
    table.add_row("clips/s", f"{data['clips_per_s']:.2f} ({data['clips_per_s'] / cores:.2f} per core, {cores} cores)")
    table.add_row("frames/s", f"{data['frames_per_s']:.1f} ({data['frames_per_s'] / cores:.1f} per core)")
    for reason, count in data["reasons"].items():
        table.add_row(f"reject: {reason}", str(count))
    console.print(table)
