"""``EvalRecipe``: an evaluation protocol as values (``recipes/eval/*.yaml``), typed and checked when loaded."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from animatex_train.eval.metrics.suite import MetricsConfig

PROTOCOLS = ("self_driven", "cross_driven", "cross_identity")


@dataclass
class EvalRecipe:
    """What an evaluation generates and how it scores it.

    Attributes:
        protocol: ``self_driven`` (reference and poses from the same test video; its frames are the ground
            truth: all seven metrics), ``cross_driven`` (A2Bench's rescaled pose: the character's own pose
            sequence realigned to the body proportions of another test video's person with the EPI realignment,
            its own video still the ground truth) or ``cross_identity`` (the character driven by another test
            video: no ground truth, distribution metrics against the driving videos' real frames).
        test_set: a ``.jsonl`` manifest or a ``synth`` folder (``testset.read_test_set``); ``--test_set``.
        split: the manifest split to use (None: every line).
        max_videos: evaluate only the first N videos (None: all).
        num_frames: frames generated per video (from ``start``; DisCo's clips are 16).
        stride: take every N-th source frame.
        reference_frame: the video frame used as the reference image (DisCo: 0, the first frame).
        partner_offset: cross protocols pair video ``i`` with video ``(i + partner_offset) mod n``.
        resolution_px: ``(height, width)`` the metrics are computed at (generated and GT frames resized with PIL
            bicubic when they differ); None = the generation size. L1 depends on it (DisCo divides by H*W).
        save_videos: write ``videos/<id>.mp4`` (generated | ground truth) for the report.
        metrics: which metrics and how (``MetricsConfig``).
        animate: ``AnimateSettings`` overrides as nested sections (``inputs``, ``sampling``, ``output``, ``mode``):
            the generation runs the ``animate`` pipeline with them.
    """

    protocol: str = "self_driven"
    test_set: str | None = None
    split: str | None = "val"
    max_videos: int | None = None
    num_frames: int = 16
    stride: int = 1
    reference_frame: int = 0
    partner_offset: int = 1
    resolution_px: tuple[int, int] | None = None
    save_videos: bool = True
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    animate: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.metrics, dict):
            self.metrics = _build(MetricsConfig, self.metrics, "metrics")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol: expected one of {PROTOCOLS}, got {self.protocol!r}")
        if self.num_frames < 1 or self.stride < 1 or self.reference_frame < 0:
            raise ValueError(
                f"num_frames/stride/reference_frame: expected >= 1/>= 1/>= 0, got "
                f"{self.num_frames}/{self.stride}/{self.reference_frame}"
            )
        if self.resolution_px is not None:
            if len(self.resolution_px) != 2 or min(self.resolution_px) < 16:
                raise ValueError(f"resolution_px: expected [height, width] >= 16, got {self.resolution_px}")
            self.resolution_px = (int(self.resolution_px[0]), int(self.resolution_px[1]))
        if self.protocol == "cross_identity":
            paired = [m for m in self.metrics.metrics if m in ("psnr_star", "ssim", "l1", "lpips", "psnr_legacy_uint8")]
            if paired:
                raise ValueError(
                    f"metrics: {paired} need ground truth, which cross_identity has none of; "
                    f"keep only fid, fid_vid, fvd"
                )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(names)}")
    return cls(**data)


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> EvalRecipe:
    """Read a recipe YAML (values only) and apply ``overrides`` (top-level keys)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--recipe: {path} does not exist (see recipes/eval/)")
    data = yaml.safe_load(path.read_text()) or {}
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return _build(EvalRecipe, data, str(path))
