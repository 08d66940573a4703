"""All requested metrics over a stream of videos: paired scores per frame pair, feature statistics for the
distribution metrics, gathered across ranks at the end. Networks are built only for the metrics asked for."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from animatex_train.eval.metrics.aggregate import PairedScores
from animatex_train.eval.metrics.distribution import ClipFeatureStream, FrameFeatureStream
from animatex_train.eval.metrics.frechet import FeatureStats, frechet_from_stats
from animatex_train.eval.metrics.paired import PAIRED_METRICS
from animatex_train.eval.metrics.video_clips import ClipMode
from animatex_train.eval.metrics.weights import file_sha256, load_state_dict, resolve_weight

# The paper's column order (Animate-X Tables 1-6), then the legacy column some tables copy.
PAPER_METRICS = ("psnr_star", "ssim", "l1", "lpips", "fid", "fid_vid", "fvd")
ALL_METRICS = (*PAPER_METRICS, "psnr_legacy_uint8")
PAIRED = ("psnr_star", "ssim", "l1", "lpips", "psnr_legacy_uint8")
DISTRIBUTION = ("fid", "fid_vid", "fvd")
NETWORK_OF = {"lpips": "vgg16", "fid": "fid_inception", "fid_vid": "r3d50", "fvd": "i3d"}


@dataclass
class WeightPaths:
    """Explicit weight files (``--weights.<name>``); None looks in the torch hub cache (``weights.py``).

    Attributes:
        fid_inception: ``pt_inception-2015-12-05-6726825d.pth`` (FID).
        vgg16: ``vgg16-397923af.pth`` (LPIPS trunk).
        i3d: ``i3d_pretrained_400.pt`` (FVD).
        r3d50: ``resnet-50-kinetics.pth`` (FID-VID).
    """

    fid_inception: str | None = None
    vgg16: str | None = None
    i3d: str | None = None
    r3d50: str | None = None


@dataclass
class MetricsConfig:
    """Which metrics and how (defaults reproduce DisCo, docs/evaluation.md).

    Attributes:
        metrics: names from ``psnr_star, ssim, l1, lpips, fid, fid_vid, fvd, psnr_legacy_uint8``.
        lpips_input_range: ``unit`` (DisCo feeds [0, 1]) or ``signed`` ([-1, 1], what lpips expects).
        clip_mode: ``sliding`` (stride-1 16-frame windows, DisCo frame folders) or ``whole`` (one clip per video).
        fvd_flavour: ``disco`` (PIL bicubic 224 stretch, I3D logits); the only flavour implemented, named so a
            recipe states it.
        frechet_method: ``sqrtm`` (pytorch-fid/DisCo's scipy sqrtm: the published numbers; a minute for 2048-d on
            2 cores) or ``eigh`` (the same trace from symmetric eigendecompositions: faster and better conditioned,
            ~2e-4 relative from sqrtm on rank-deficient 2048-d sets).
        fid_batch_size: frames per Inception forward (pytorch-fid's CLI default 50; changes only rounding).
        clip_batch_size: clips per 3D-network forward (DisCo uses 1; changes only rounding).
        device: where the networks run.
    """

    metrics: list[str] = field(default_factory=lambda: list(PAPER_METRICS))
    lpips_input_range: str = "unit"
    clip_mode: ClipMode = "sliding"
    fvd_flavour: str = "disco"
    frechet_method: str = "sqrtm"
    fid_batch_size: int = 50
    clip_batch_size: int = 4
    device: str = "cpu"

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in ALL_METRICS]
        if unknown:
            raise ValueError(f"metrics: unknown {unknown}; expected names from {list(ALL_METRICS)}")
        if self.fvd_flavour != "disco":
            raise ValueError(
                f"fvd_flavour: only 'disco' is implemented (PIL bicubic stretch to 224, Inception-I3D "
                f"logits), got {self.fvd_flavour!r}"
            )
        if self.frechet_method not in ("sqrtm", "eigh"):
            raise ValueError(f"frechet_method: expected 'sqrtm' or 'eigh', got {self.frechet_method!r}")
        if self.lpips_input_range not in ("unit", "signed"):
            raise ValueError(f"lpips_input_range: expected 'unit' (DisCo) or 'signed', got {self.lpips_input_range!r}")


def _build(metric: str, path: str, config: MetricsConfig) -> torch.nn.Module:
    if metric == "lpips":
        from animatex_train.eval.metrics.lpips_vgg import DiscoLPIPS

        return DiscoLPIPS(path, config.lpips_input_range)
    if metric == "fid":
        from animatex_train.eval.metrics.fid_inception import FIDInceptionFeatures

        return FIDInceptionFeatures(path)
    if metric == "fid_vid":
        from animatex_train.eval.metrics.r3d50 import ResNet3D50 as network_class
    else:
        from animatex_train.eval.metrics.i3d import InceptionI3d as network_class
    network = network_class()
    network.load_state_dict(load_state_dict(path), strict=True)
    return network.eval().requires_grad_(False)


def _frechet_or_none(gen: FeatureStats, real: FeatureStats, method: str) -> float | None:
    """None (reported as "n/a") when a side has fewer than 2 samples: no covariance, no distance."""
    return frechet_from_stats(gen, real, method) if min(gen.count, real.count) >= 2 else None


class MetricSuite:
    """Accumulates the configured metrics video by video.

    Args:
        config: metrics and options.
        weights: weight file paths (None entries: the torch hub cache).
    """

    def __init__(self, config: MetricsConfig, weights: WeightPaths | None = None) -> None:
        self.config, self.weights = config, weights or WeightPaths()
        self.weight_files: dict[str, dict[str, str]] = {}
        networks = {}
        for metric in config.metrics:
            if metric in NETWORK_OF:
                key = NETWORK_OF[metric]
                path = resolve_weight(key, getattr(self.weights, key))
                self.weight_files[key] = {"path": str(path), "sha256": file_sha256(path)}
                networks[metric] = _build(metric, str(path), config).to(config.device)
        self.networks = networks
        self.lpips = networks.get("lpips")
        self.paired_requested = any(m in PAIRED for m in config.metrics)
        self.reset()

    def networks_to(self, device: torch.device | str) -> None:
        """Move the metric networks (each forward follows its network's device)."""
        for network in self.networks.values():
            network.to(device)

    def reset(self) -> None:
        """Forget every score and statistic, keeping the networks (an in-training evaluation scores again at each
        validation without reloading weights)."""
        config, networks = self.config, self.networks
        self.paired = PairedScores()
        self.frames = FrameFeatureStream(networks["fid"], config.fid_batch_size) if "fid" in networks else None
        self.clips = {
            m: ClipFeatureStream(networks[m], m, config.clip_mode, config.clip_batch_size)
            for m in ("fid_vid", "fvd")
            if m in networks
        }
        self.num_videos = {"gen": 0, "real": 0}

    def add_pair(self, video: str, gen: np.ndarray, gt: np.ndarray) -> dict[str, float]:
        """Paired metrics of one ``(H, W, 3)`` uint8 frame pair (recorded under ``video``)."""
        scores = {m: PAIRED_METRICS[m](gen, gt) for m in self.config.metrics if m in PAIRED_METRICS}
        if self.lpips is not None:
            scores["lpips"] = float(self.lpips(torch.from_numpy(gen)[None], torch.from_numpy(gt)[None])[0])
        if scores:
            self.paired.add(video, scores)
        return scores

    def add_video(self, side: str, frames: Sequence[np.ndarray]) -> None:
        """One video's frames into the ``gen`` or ``real`` side of the distribution metrics."""
        self.num_videos[side] += 1
        if self.frames is not None:
            for frame in frames:
                self.frames.add(side, frame)
        for stream in self.clips.values():
            stream.add_video(side, frames)

    def add_video_pair(self, video: str, gen: Sequence[np.ndarray], gt: Sequence[np.ndarray] | None) -> None:
        """A generated video and (when there is one) its ground truth: paired metrics frame by frame, and both into
        the distribution metrics."""
        if gt is not None and self.paired_requested:
            if len(gen) != len(gt):
                raise ValueError(f"video {video}: {len(gen)} generated frames but {len(gt)} ground-truth frames")
            for gen_frame, gt_frame in zip(gen, gt, strict=True):
                self.add_pair(video, gen_frame, gt_frame)
        self.add_video("gen", gen)
        if gt is not None:
            self.add_video("real", gt)

    def compute(self) -> dict[str, Any]:
        """Gather every rank's scores and statistics; ``{"metrics": {...}, "per_video": {...}, "counts": {...}}``
        (the same on every rank)."""
        paired = self.paired.all_gather()
        metrics: dict[str, float | None] = dict.fromkeys(self.config.metrics)
        metrics.update({k: v for k, v in paired.pooled().items() if k in metrics})
        counts: dict[str, Any] = {"frame_pairs": sum(v["n"] for v in paired.per_video().values())}
        if self.frames is not None:
            for side in ("gen", "real"):
                self.frames.flush(side)
            gen, real = (self.frames.stats[s].all_gather() for s in ("gen", "real"))
            counts["fid_frames"] = {"gen": gen.count, "real": real.count}
            metrics["fid"] = _frechet_or_none(gen, real, self.config.frechet_method)
        for name, stream in self.clips.items():
            gen, real = (stream.stats[s].all_gather() for s in ("gen", "real"))
            counts[f"{name}_clips"] = {"gen": gen.count, "real": real.count}
            metrics[name] = _frechet_or_none(gen, real, self.config.frechet_method)
        return {
            "metrics": metrics,
            "per_video": paired.per_video(),
            "counts": counts,
            "config": asdict(self.config),
            "weights": self.weight_files,
        }
