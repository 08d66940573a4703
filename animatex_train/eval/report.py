"""The evaluation's outputs: ``metrics.json``, ``metrics.md`` (the paper's column order) and a W&B run (summary
metrics and a per-video table with the videos)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from animatex_train.eval.metrics.suite import PAPER_METRICS

# Column heads as the Animate-X tables print them (arrows: better direction).
COLUMN_TITLES = {
    "psnr_star": "PSNR*↑",
    "ssim": "SSIM↑",
    "l1": "L1↓",
    "lpips": "LPIPS↓",
    "fid": "FID↓",
    "fid_vid": "FID-VID↓",
    "fvd": "FVD↓",
    "psnr_legacy_uint8": "PSNR (legacy uint8)↑",
}


def format_value(metric: str, value: float | None) -> str:
    """The tables' number formats: L1 in scientific notation (~1e-4), the others with 2-3 decimals."""
    if value is None:
        return "n/a"
    if metric == "l1":
        return f"{value:.2E}"
    if metric in ("ssim", "lpips"):
        return f"{value:.3f}"
    return f"{value:.2f}"


def markdown_table(rows: list[tuple[str, dict[str, float | None]]], metrics: tuple[str, ...] = PAPER_METRICS) -> str:
    """``| name | PSNR* | SSIM | L1 | LPIPS | FID | FID-VID | FVD |`` with one line per ``(name, metrics)``."""
    head = ["", *(COLUMN_TITLES[m] for m in metrics)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, values in rows:
        lines.append("| " + " | ".join([name, *(format_value(m, values.get(m)) for m in metrics)]) + " |")
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: Path) -> None:
    """``metrics.json`` + ``metrics.md`` in ``out``, and the W&B run (``WANDB_MODE``; offline by default)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(report, indent=2, default=str))
    metrics = tuple(m for m in PAPER_METRICS if m in report["metrics"])
    extra = tuple(m for m in report["metrics"] if m not in PAPER_METRICS)
    text = [
        f"# Evaluation: {report['protocol']['protocol']} ({report['counts']['videos']} videos)\n",
        markdown_table([("ours", report["metrics"])], metrics + extra),
    ]
    per_video = [(row["id"], row) for row in report["per_video"]]
    paired = tuple(m for m in metrics + extra if m in ("psnr_star", "ssim", "l1", "lpips", "psnr_legacy_uint8"))
    if paired:
        text += ["\n## Per video (paired metrics)\n", markdown_table(per_video, paired)]
    (out / "metrics.md").write_text("".join(text))
    log_wandb(report, out)


def log_wandb(report: dict[str, Any], out: Path) -> None:
    """Summary metrics and a per-video table (with the side-by-side videos) in a W&B run; ``WANDB_MODE=disabled``
    skips it."""
    if os.environ.get("WANDB_MODE", "offline") == "disabled":
        return
    import wandb

    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", "animatex-eval"),
        dir=str(out),
        job_type="evaluate",
        config={"protocol": report["protocol"], "checkpoint": report["checkpoint"]},
        mode=os.environ.get("WANDB_MODE", "offline"),
        reinit="finish_previous",
    )
    try:
        run.summary.update({f"eval/{k}": v for k, v in report["metrics"].items() if v is not None})
        keys = [k for k in report["metrics"] if any(k in row for row in report["per_video"])]
        table = wandb.Table(columns=["id", "partner", "frames", *keys, "video"])
        for row in report["per_video"]:
            video = wandb.Video(row["mp4"], format="mp4") if row.get("mp4") else None
            table.add_data(row["id"], row.get("partner"), row["frames"], *(row.get(k) for k in keys), video)
        run.log({"eval/per_video": table})
    finally:
        run.finish()
