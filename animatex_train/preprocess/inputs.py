"""The list of input videos: discovery (folder, glob, list file), per-video metadata, stable ids, rank split.

The list is sorted by the video's relative path, and every rank computes the same list and takes every
``world_size``-th entry starting at its rank, so the split is deterministic and disjoint whatever the
launcher (torchrun, a Slurm array, explicit flags).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from animatex_train.preprocess import rejects
from animatex_train.preprocess.rejects import Reject

VIDEO_EXTENSIONS = (".mp4", ".mov", ".webm", ".mkv")
LIST_EXTENSIONS = (".txt", ".lst", ".list")
SPLITS = ("train", "val", "test")
METADATA_COLUMNS = ("video", "split", "source", "licence")
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_MAX_ID_LENGTH = 64  # keeps tar member names (id + "-c00000.latent_mean.npy") under ustar's 100 characters


@dataclass(frozen=True)
class VideoSource:
    """One input video.

    Attributes:
        path: absolute path of the file.
        rel_path: path relative to the input root (POSIX); the video's identity in journals and rejects.
        video_id: the id used in sample keys (letters, digits, ``_``, ``-``), unique in the dataset.
        split: ``train``, ``val`` or ``test``.
        source: free text from the metadata file.
        licence: free text from the metadata file.
    """

    path: Path
    rel_path: str
    video_id: str
    split: str = "train"
    source: str = ""
    licence: str = ""

    def sidecar_path(self, folder: Path | None, suffix: str) -> Path:
        """``<folder>/<rel_path without extension><suffix>``, or next to the video when ``folder`` is None."""
        if folder is None:
            return self.path.with_suffix(suffix)
        return folder / Path(self.rel_path).with_suffix(suffix)


class InputError(ValueError):
    """The input specification or the metadata file is wrong; the message says how to fix it."""


def _has_glob(spec: str) -> bool:
    return any(ch in spec for ch in "*?[")


def _glob_root(spec: str) -> Path:
    """The longest leading directory of a glob pattern without wildcards (relative paths start there)."""
    fixed: list[str] = []
    for part in Path(os.path.expanduser(spec)).parts:
        if _has_glob(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _rel(path: Path, root: Path) -> str:
    try:
        # abspath, not resolve(): a symlinked video keeps its own name, not its target's.
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        return Path(os.path.abspath(path)).as_posix().lstrip("/")


def list_inputs(spec: str) -> tuple[list[tuple[Path, str]], list[Reject]]:
    """Expand an input spec into ``(path, rel_path)`` pairs, sorted by ``rel_path``.

    Args:
        spec: a folder (searched recursively for ``VIDEO_EXTENSIONS``), a glob pattern, a list file
            (``.txt``/``.lst``/``.list``: one path per line, relative to the list file; ``#`` comments),
            or a single video file.

    Returns:
        The candidate videos and the rejects found while listing (list-file entries that do not
        exist or do not have a video extension).

    Raises:
        InputError: the spec matches nothing.
    """
    found: list[tuple[Path, str]] = []
    bad: list[Reject] = []
    path = Path(spec).expanduser()
    if path.is_dir():
        for candidate in sorted(path.rglob("*")):
            if candidate.is_file() and candidate.suffix.lower() in VIDEO_EXTENSIONS:
                found.append((candidate, _rel(candidate, path)))
    elif _has_glob(spec):
        root = _glob_root(spec)
        for name in sorted(glob.glob(os.path.expanduser(spec), recursive=True)):
            candidate = Path(name)
            if candidate.is_file():
                found.append((candidate, _rel(candidate, root)))
    elif path.is_file() and path.suffix.lower() in LIST_EXTENSIONS:
        for line_no, line in enumerate(path.read_text().splitlines(), start=1):
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            candidate = Path(entry).expanduser()
            candidate = candidate if candidate.is_absolute() else path.parent / candidate
            rel = _rel(candidate, path.parent)
            if not candidate.is_file():
                bad.append(Reject(rel, rejects.MISSING, f"{path}:{line_no}: no such file {candidate}"))
                continue
            found.append((candidate, rel))
    elif path.is_file():
        found.append((path, path.name))
    else:
        raise InputError(
            f"videos={spec!r}: no such folder or file, and not a glob pattern; give a folder of videos, a glob "
            f"such as 'clips/**/*.mp4', a list file ({', '.join(LIST_EXTENSIONS)}) or one video file"
        )
    videos: list[tuple[Path, str]] = []
    for candidate, rel in found:
        if candidate.suffix.lower() not in VIDEO_EXTENSIONS:
            bad.append(
                Reject(rel, rejects.NOT_VIDEO, f"extension {candidate.suffix!r} is not one of {VIDEO_EXTENSIONS}")
            )
        else:
            videos.append((Path(os.path.abspath(candidate)), rel))
    videos.sort(key=lambda item: item[1])
    rels = [rel for _, rel in videos]
    if len(set(rels)) != len(rels):
        duplicates = sorted({r for r in rels if rels.count(r) > 1})
        raise InputError(f"videos={spec!r}: the same video is listed more than once: {duplicates[:5]}")
    if not videos and not bad:
        raise InputError(f"videos={spec!r}: no video files ({', '.join(VIDEO_EXTENSIONS)}) found")
    return videos, sorted(bad, key=Reject.sort_key)


def video_ids(rel_paths: list[str]) -> list[str]:
    """A unique, key-safe id per video: the sanitised file stem, plus a short hash of the path on collision."""
    stems = []
    for rel in rel_paths:
        stem = _ID_UNSAFE.sub("_", Path(rel).stem).strip("_") or "video"
        if len(stem) > _MAX_ID_LENGTH:
            stem = f"{stem[: _MAX_ID_LENGTH - 9]}-{hashlib.sha1(rel.encode()).hexdigest()[:8]}"
        stems.append(stem)
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    ids = [
        stem if counts[stem] == 1 else f"{stem[: _MAX_ID_LENGTH - 9]}-{hashlib.sha1(rel.encode()).hexdigest()[:8]}"
        for stem, rel in zip(stems, rel_paths, strict=True)
    ]
    if len(set(ids)) != len(ids):  # a hash suffix that happens to equal another file's stem
        raise InputError(f"could not derive unique video ids; rename one of: {sorted(rel_paths)[:10]}")
    return ids


def load_metadata(path: str) -> dict[str, dict[str, str]]:
    """Per-video metadata from a CSV (header row) or JSONL file, keyed by its ``video`` column.

    The ``video`` value is matched against the video's relative path, then against its file name.
    Columns: ``video`` (required), ``split`` (train/val/test), ``source``, ``licence``.

    Raises:
        InputError: unreadable file, unknown column, missing ``video``, bad split or a duplicate row.
    """
    file = Path(path)
    if not file.is_file():
        raise InputError(f"metadata={path!r}: no such file")
    rows: list[dict[str, str]] = []
    if file.suffix.lower() == ".csv":
        with file.open(newline="") as handle:
            rows = [dict(row) for row in csv.DictReader(handle)]
    elif file.suffix.lower() in (".jsonl", ".ndjson"):
        for line_no, line in enumerate(file.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise InputError(f"metadata {path}:{line_no}: not valid JSON ({error})") from error
                if not isinstance(row, dict):
                    raise InputError(f"metadata {path}:{line_no}: expected a JSON object, got {type(row).__name__}")
                rows.append({str(k): "" if v is None else str(v) for k, v in row.items()})
    else:
        raise InputError(f"metadata={path!r}: expected a .csv or .jsonl file, got {file.suffix!r}")
    table: dict[str, dict[str, str]] = {}
    for number, row in enumerate(rows, start=1):
        unknown = sorted(set(row) - set(METADATA_COLUMNS))
        if unknown:
            raise InputError(f"metadata {path} row {number}: unknown column(s) {unknown}; allowed: {METADATA_COLUMNS}")
        video = (row.get("video") or "").strip()
        if not video:
            raise InputError(f"metadata {path} row {number}: the 'video' column is empty")
        split = (row.get("split") or "train").strip()
        if split not in SPLITS:
            raise InputError(f"metadata {path} row {number}: split {split!r} is not one of {SPLITS}")
        if video in table:
            raise InputError(f"metadata {path}: video {video!r} appears in more than one row")
        table[video] = {"split": split, "source": row.get("source") or "", "licence": row.get("licence") or ""}
    return table


def discover_videos(spec: str, metadata: str | None = None) -> tuple[list[VideoSource], list[Reject]]:
    """The full, sorted input list with ids and metadata, plus listing-time rejects (same on every rank)."""
    pairs, bad = list_inputs(spec)
    table = load_metadata(metadata) if metadata else {}
    ids = video_ids([rel for _, rel in pairs])
    videos = []
    used: set[str] = set()
    for (path, rel), video_id in zip(pairs, ids, strict=True):
        match = rel if rel in table else (Path(rel).name if Path(rel).name in table else None)
        info = table.get(match, {}) if match else {}
        if match:
            used.add(match)
        videos.append(VideoSource(path=path, rel_path=rel, video_id=video_id, **info))
    unused = sorted(set(table) - used)
    if unused:
        raise InputError(
            f"metadata {metadata}: {len(unused)} row(s) match no input video, e.g. {unused[:3]}; the 'video' column "
            "must be a path relative to the input folder or a file name"
        )
    return videos, bad


def resolve_rank(rank: int | None, world_size: int | None, environ: dict[str, str] | None = None) -> tuple[int, int]:
    """This process's ``(rank, world_size)``: explicit values, else torchrun's, else a Slurm array's, else (0, 1).

    Raises:
        InputError: inconsistent values (a rank outside the world, a strided Slurm array).
    """
    env = dict(os.environ if environ is None else environ)
    if rank is None and world_size is None:
        if "RANK" in env and "WORLD_SIZE" in env:
            rank, world_size = int(env["RANK"]), int(env["WORLD_SIZE"])
        elif "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
            task, count = int(env["SLURM_ARRAY_TASK_ID"]), int(env["SLURM_ARRAY_TASK_COUNT"])
            low, high = int(env.get("SLURM_ARRAY_TASK_MIN", 0)), int(env.get("SLURM_ARRAY_TASK_MAX", count - 1))
            if high - low + 1 != count:
                raise InputError(
                    f"Slurm array {low}-{high} has {count} tasks: a strided or sparse array cannot map to ranks; "
                    "use a contiguous --array=0-N (or pass --rank/--world_size)"
                )
            rank, world_size = task - low, count
        else:
            rank, world_size = 0, 1
    if rank is None and world_size == 1:
        rank = 0
    if rank is None or world_size is None:
        raise InputError(f"give both rank and world_size (got rank={rank}, world_size={world_size})")
    if world_size < 1 or not 0 <= rank < world_size:
        raise InputError(f"rank must be in [0, world_size): got rank={rank}, world_size={world_size}")
    return rank, world_size


def rank_share(videos: list[VideoSource], rank: int, world_size: int) -> list[VideoSource]:
    """This rank's videos: every ``world_size``-th of the sorted list, from ``rank`` (disjoint, covering)."""
    return videos[rank::world_size]
