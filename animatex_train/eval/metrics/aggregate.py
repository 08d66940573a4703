"""Per-frame-pair scores kept per video (scalars only, never frames) and DisCo's aggregation: the plain mean over
all frame pairs pooled across videos (not a mean of per-video means); gathered across ranks before reducing."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch.distributed as dist


class PairedScores:
    """Per-pair values of each paired metric, grouped by video."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))

    def add(self, video: str, scores: dict[str, float]) -> None:
        """Record one frame pair's ``{metric: value}`` for ``video``."""
        for name, value in scores.items():
            self.values[str(video)][name].append(float(value))

    def all_gather(self) -> PairedScores:
        """Every rank's scores (video ids are unique across ranks: each rank scores its own videos)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self
        gathered: list[dict | None] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, {v: dict(m) for v, m in self.values.items()})
        merged = PairedScores()
        for part in gathered:
            for video, metrics in part.items():
                for name, values in metrics.items():
                    merged.values[video][name].extend(values)
        return merged

    def pooled(self) -> dict[str, float]:
        """``{metric: mean over every frame pair of every video}`` (videos in sorted order, as DisCo's sorted
        file list)."""
        pooled: dict[str, list[float]] = defaultdict(list)
        for video in sorted(self.values):
            for name, values in self.values[video].items():
                pooled[name].extend(values)
        return {name: float(np.mean(values)) for name, values in pooled.items()}

    def per_video(self) -> dict[str, dict[str, float]]:
        """``{video: {metric: mean, "n": frame pairs}}``."""
        out = {}
        for video in sorted(self.values):
            metrics = self.values[video]
            out[video] = {name: float(np.mean(values)) for name, values in metrics.items()}
            out[video]["n"] = max(len(values) for values in metrics.values())
        return out
