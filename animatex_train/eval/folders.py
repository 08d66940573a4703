"""Scoring two flat folders of frame images (generated vs ground truth) the way DisCo's ``gen_eval.sh`` does: paired
metrics over the sorted, name-matched files; FID over all frames of each folder; FID-VID / FVD over DisCo's
stride-1 windows of consecutively numbered frames (``video_clips.disco_folder_windows``)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image
from rich.progress import track

from animatex_train.eval.metrics.suite import MetricSuite
from animatex_train.eval.metrics.video_clips import DISCO_FRAME_PATTERNS, disco_folder_windows

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def frame_files(folder: str | Path) -> list[Path]:
    """The folder's image files, sorted by name (DisCo's and pytorch-fid's order)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"frame folder {folder} does not exist")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def read_rgb(path: Path) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB (PIL ``convert("RGB")``, as pytorch-fid and DisCo's LPIPS read frames)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def video_of(name: str) -> str:
    """The video a frame file belongs to: the DisCo pattern's prefix, else the name without its ``_<index>``."""
    for pattern in DISCO_FRAME_PATTERNS:
        match = pattern.match(name)
        if match:
            return match.group(1).rstrip("_")
    return re.sub(r"_?\d+$", "", Path(name).stem) or Path(name).stem


def score_folders(suite: MetricSuite, gen_dir: str | Path, gt_dir: str | Path, progress: bool = True) -> None:
    """Feed two frame folders into ``suite`` (call ``suite.compute()`` afterwards)."""
    gen_files, gt_files = frame_files(gen_dir), frame_files(gt_dir)
    if [p.name for p in gen_files] != [p.name for p in gt_files] and suite.paired_requested:
        raise ValueError(
            f"paired metrics need the same file names in {gen_dir} and {gt_dir} (DisCo asserts it): "
            f"{len(gen_files)} vs {len(gt_files)} files, first difference "
            f"{sorted({p.name for p in gen_files} ^ {p.name for p in gt_files})[:3]}"
        )
    if suite.paired_requested:
        for gen, gt in track(list(zip(gen_files, gt_files, strict=True)), "paired metrics", disable=not progress):
            suite.add_pair(video_of(gen.name), read_rgb(gen), read_rgb(gt))
    for side, files in (("gen", gen_files), ("real", gt_files)):
        if suite.frames is not None:
            for path in track(files, f"FID features ({side})", disable=not progress):
                suite.frames.add(side, read_rgb(path))
        by_name = {p.name: p for p in files}
        for name, stream in suite.clips.items():
            windows, _ = disco_folder_windows(by_name)
            for window in track(windows, f"{name} windows ({side})", disable=not progress):
                stream.add_window(side, [read_rgb(by_name[n]) for n in window])
