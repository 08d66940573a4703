"""The per-rank journal: an fsynced JSONL log of finished work, so rerunning the same command resumes.

One file per rank, ``journal-r<rank>.jsonl``, only ever appended to (each line flushed and fsynced):

* ``header``: rank, world size, and the fingerprint of everything that decides the output (settings,
  encoder and pose-model identities, the full video list); a rerun with different ones is refused;
* ``shard``: a closed (renamed) shard and the outcomes of the videos in it; only then do those videos count
  as done, so a crash never leaves a video half-recorded;
* ``reject``: a video that produced no samples; done, except reason ``error`` (an unexpected exception,
  possibly transient such as a full disk), which is retried on the next run;
* ``done``: the rank finished its share (with its summary); the merge step requires it from every rank.

A line cut by a crash (no trailing newline) is dropped when the journal is reopened.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from animatex_train.preprocess import rejects
from animatex_train.preprocess.rejects import Reject
from animatex_train.preprocess.shards import ShardRecord

log = logging.getLogger(__name__)


class JournalError(RuntimeError):
    """A journal that cannot be resumed from (other settings, other world size, corruption)."""


def journal_path(output_dir: Path, rank: int) -> Path:
    return output_dir / f"journal-r{rank:03d}.jsonl"


def fingerprint(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass
class VideoOutcome:
    """What one successfully processed video contributed.

    Attributes:
        video: relative path.
        video_id: id in the sample keys.
        split: its split.
        source: free text from the metadata.
        licence: free text from the metadata.
        num_clips: clips written.
        num_frames: frames over those clips.
        clip_rejects: clips of this video that were left out, with reasons.
    """

    video: str
    video_id: str
    split: str
    source: str
    licence: str
    num_clips: int
    num_frames: int
    clip_rejects: list[Reject] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "video": self.video,
            "video_id": self.video_id,
            "split": self.split,
            "source": self.source,
            "licence": self.licence,
            "num_clips": self.num_clips,
            "num_frames": self.num_frames,
            "clip_rejects": [r.to_json() for r in self.clip_rejects],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VideoOutcome:
        return cls(
            video=data["video"],
            video_id=data["video_id"],
            split=data["split"],
            source=data["source"],
            licence=data["licence"],
            num_clips=int(data["num_clips"]),
            num_frames=int(data["num_frames"]),
            clip_rejects=[Reject.from_json(r) for r in data["clip_rejects"]],
        )


@dataclass
class JournalState:
    """What a journal says has been done.

    Attributes:
        header: the header line.
        shards: closed shards with the outcomes of their videos, in order.
        rejects: the latest reject per rejected video (videos later written to a shard are dropped).
        finished: the last line is ``done``.
        summaries: the summaries of the ``done`` lines.
    """

    header: dict[str, Any]
    shards: list[tuple[ShardRecord, list[VideoOutcome]]] = field(default_factory=list)
    rejects: dict[str, Reject] = field(default_factory=dict)
    finished: bool = False
    summaries: list[dict[str, Any]] = field(default_factory=list)

    def done_videos(self) -> set[str]:
        """Videos a rerun must skip: written to a closed shard, or rejected for a reason other than ``error``."""
        done = {o.video for _, outcomes in self.shards for o in outcomes}
        done |= {video for video, r in self.rejects.items() if r.reason != rejects.ERROR}
        return done

    def next_index(self, split: str, bucket: str) -> int:
        """Index of the next shard of ``split`` and resolution ``bucket`` (one past the journaled ones)."""
        indices = [
            int(Path(s.path).stem.rsplit("-", 1)[1])
            for s, _ in self.shards
            if s.split == split and list(s.resolutions) == [bucket]
        ]
        return max(indices) + 1 if indices else 0


class RankJournal:
    """Append-only journal of one rank.

    Use ``RankJournal.open``; it creates the file with a header, or checks that an existing one was written
    with the same settings and reads its state.
    """

    def __init__(self, path: Path, state: JournalState) -> None:
        self.path = path
        self.state = state

    @classmethod
    def open(cls, output_dir: Path, rank: int, header: dict[str, Any]) -> RankJournal:
        """Open (creating or resuming) the journal of ``rank``.

        Args:
            output_dir: dataset folder.
            rank: this rank.
            header: ``{"rank", "world_size", "fingerprint", "settings", ...}`` of this run.

        Raises:
            JournalError: the existing journal was written with other settings or another world size.
        """
        path = journal_path(output_dir, rank)
        if not path.exists():
            journal = cls(path, JournalState(header={"type": "header", **header}))
            journal._append({"type": "header", **header})
            return journal
        state = read_journal(path, repair=True)
        old = state.header
        if old.get("world_size") != header["world_size"] or old.get("fingerprint") != header["fingerprint"]:
            changed = sorted(
                key
                for key in set(old.get("settings", {})) | set(header.get("settings", {}))
                if old.get("settings", {}).get(key) != header.get("settings", {}).get(key)
            )
            if old.get("world_size") != header["world_size"]:
                changed.append(f"world_size ({old.get('world_size')} -> {header['world_size']})")
            raise JournalError(
                f"{path} was written by a run with different settings or inputs (changed: {changed or ['?']}); "
                "resuming would mix two datasets. Rerun with the original settings, or use a new output_dir."
            )
        return cls(path, state)

    def _append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, sort_keys=True) + "\n"
        with self.path.open("a") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def record_shard(self, shard: ShardRecord, outcomes: list[VideoOutcome]) -> None:
        """Journal a closed shard; its videos now count as done."""
        self._append({"type": "shard", "shard": shard.to_json(), "videos": [o.to_json() for o in outcomes]})
        self.state.shards.append((shard, outcomes))
        self.state.finished = False
        for outcome in outcomes:
            self.state.rejects.pop(outcome.video, None)

    def record_reject(self, reject: Reject) -> None:
        """Journal a video that produced no samples."""
        self._append({"type": "reject", "reject": reject.to_json()})
        self.state.rejects[reject.video] = reject
        self.state.finished = False

    def record_done(self, summary: dict[str, Any]) -> None:
        """Journal that this rank has finished its share."""
        self._append({"type": "done", "summary": summary})
        self.state.finished = True
        self.state.summaries.append(summary)


def read_journal(path: Path, repair: bool = False) -> JournalState:
    """Parse a journal.

    Args:
        path: the journal file.
        repair: cut a trailing partial line left by a crash (only the rank that owns the file may do this).

    Raises:
        JournalError: no header, or a corrupt line that is not the last one.
    """
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        log.warning("%s: dropping a partial last line (%d bytes) left by an interrupted run", path, len(data) - cut)
        data = data[:cut]
        if repair:
            with path.open("r+b") as handle:
                handle.truncate(cut)
                os.fsync(handle.fileno())
    lines = data.decode().splitlines()
    try:
        records = [json.loads(line) for line in lines if line.strip()]
    except json.JSONDecodeError as error:
        raise JournalError(f"{path}: corrupt line ({error}); delete this rank's output to redo it") from error
    if not records or records[0].get("type") != "header":
        raise JournalError(f"{path}: no header line; it is not a prepare journal")
    state = JournalState(header=records[0])
    for record in records[1:]:
        kind = record.get("type")
        if kind == "shard":
            outcomes = [VideoOutcome.from_json(v) for v in record["videos"]]
            state.shards.append((ShardRecord(**record["shard"]), outcomes))
            for outcome in outcomes:
                state.rejects.pop(outcome.video, None)
            state.finished = False
        elif kind == "reject":
            reject = Reject.from_json(record["reject"])
            state.rejects[reject.video] = reject
            state.finished = False
        elif kind == "done":
            state.finished = True
            state.summaries.append(record.get("summary", {}))
        else:
            raise JournalError(f"{path}: unknown line type {kind!r}")
    return state
