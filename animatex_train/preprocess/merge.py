"""The merge stage: every rank's journal -> ``manifest.json`` and ``rejects.jsonl``.

It refuses to write a manifest unless every rank of the run has finished (a ``done`` line last in its
journal), all journals carry the same settings fingerprint, and every journaled shard is on disk with its
recorded size (and sha256). Only closed, journaled shards are listed, so a shard that was being written
when a rank died can never enter the manifest.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from animatex_train.data.format.manifest import MANIFEST_NAME, DatasetManifest, ShardEntry, VideoEntry
from animatex_train.preprocess.journal import JournalState, read_journal
from animatex_train.preprocess.rejects import Reject
from animatex_train.preprocess.shards import sha256_file

REJECTS_NAME = "rejects.jsonl"
_JOURNAL = re.compile(r"^journal-r(\d{3,})\.jsonl$")


class MergeError(RuntimeError):
    """The journals do not describe one complete run; the message lists what is missing."""


def merge_dataset(output_dir: str | Path, verify_hashes: bool = True) -> DatasetManifest:
    """Write the dataset manifest and the rejects list from the ranks' journals.

    Args:
        output_dir: the dataset folder.
        verify_hashes: re-read every shard and compare its sha256 with the journal.

    Returns:
        The manifest (also saved as ``<output_dir>/manifest.json``).

    Raises:
        MergeError: missing or unfinished ranks, mixed settings, missing or altered shards, duplicates.
    """
    output_dir = Path(output_dir)
    journals = sorted(p for p in output_dir.glob("journal-r*.jsonl") if _JOURNAL.match(p.name))
    if not journals:
        raise MergeError(f"{output_dir}: no journal-r*.jsonl; run the shards stage first")
    states = {int(_JOURNAL.match(p.name).group(1)): read_journal(p) for p in journals}
    first = next(iter(states.values())).header
    world_size = int(first["world_size"])
    problems = []
    missing = sorted(set(range(world_size)) - set(states))
    if missing:
        problems.append(f"ranks {missing} of {world_size} have no journal (not started?)")
    for rank, state in sorted(states.items()):
        if state.header.get("fingerprint") != first["fingerprint"] or state.header.get("world_size") != world_size:
            problems.append(f"rank {rank} ran with other settings or world size than rank {min(states)}")
        elif not state.finished:
            problems.append(f"rank {rank} has not finished (rerun it to resume)")
    if problems:
        raise MergeError(f"cannot merge {output_dir}:\n  " + "\n  ".join(problems))
    settings = first["settings"]
    shards, videos, rejects = _collect(states, output_dir, verify_hashes)
    manifest = DatasetManifest(
        name=settings["name"],
        schema_version=int(settings["schema_version"]),
        resolutions_px=[(int(h), int(w)) for h, w in settings["clips"]["resolutions_px"]],
        fps=settings["clips"]["fps"],
        num_frames_per_clip=int(settings["clips"]["num_frames"]),
        encoders={
            "vae": settings["encoders"]["vae"],
            "clip": settings["encoders"]["clip"],
            "pose": settings["pose"]["identity"],
        },
        shards=shards,
        videos=videos,
        num_rejects=len(rejects),
    )
    lines = "".join(json.dumps(r.to_json(), sort_keys=True) + "\n" for r in rejects)
    temp = output_dir / (REJECTS_NAME + ".tmp")
    temp.write_text(lines)
    os.replace(temp, output_dir / REJECTS_NAME)
    manifest.save(output_dir / MANIFEST_NAME)
    manifest.root = output_dir
    return manifest


def _collect(
    states: dict[int, JournalState], output_dir: Path, verify_hashes: bool
) -> tuple[list[ShardEntry], list[VideoEntry], list[Reject]]:
    shards: list[ShardEntry] = []
    videos: list[VideoEntry] = []
    rejects: list[Reject] = [
        Reject.from_json(r) for r in next(iter(states.values())).header["settings"].get("listing_rejects", [])
    ]
    problems = []
    for state in states.values():
        for record, outcomes in state.shards:
            path = output_dir / record.path
            if not path.is_file():
                problems.append(f"{record.path}: journaled but missing")
            elif path.stat().st_size != record.size_bytes:
                problems.append(f"{record.path}: {path.stat().st_size} bytes, journaled {record.size_bytes}")
            elif verify_hashes and sha256_file(path) != record.sha256:
                problems.append(f"{record.path}: sha256 differs from the journal")
            shards.append(ShardEntry(**record.to_json()))
            for outcome in outcomes:
                videos.append(
                    VideoEntry(
                        video=outcome.video,
                        video_id=outcome.video_id,
                        split=outcome.split,
                        source=outcome.source,
                        licence=outcome.licence,
                        num_clips=outcome.num_clips,
                        shard=record.path,
                    )
                )
                rejects.extend(outcome.clip_rejects)
        rejects.extend(state.rejects.values())
    names = [v.video for v in videos]
    if len(set(names)) != len(names):
        problems.append(
            "a video appears in more than one shard: " + str(sorted({n for n in names if names.count(n) > 1}))
        )
    keys = [k for s in shards for k in s.keys]
    if len(set(keys)) != len(keys):
        problems.append("a sample key is in more than one shard")
    if problems:
        raise MergeError(
            "the journaled shards do not match the files:\n  "
            + "\n  ".join(problems)
            + "\nDelete the affected shards and the journal lines naming them, or rerun into a new output_dir."
        )
    return (
        sorted(shards, key=lambda s: s.path),
        sorted(videos, key=lambda v: v.video),
        sorted(rejects, key=Reject.sort_key),
    )
