"""Why a video or a clip was left out of the dataset: the exception that carries it and the record that logs it.

Every input that does not become training samples ends up as one ``Reject`` line in the dataset's
``rejects.jsonl`` and in the run summary, so nothing is dropped silently.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# Reason codes, one per cause; the free-text ``detail`` says what exactly was seen.
MISSING = "missing"  # the path does not exist
NOT_VIDEO = "not_video"  # wrong file extension, or a container without a video stream
UNREADABLE = "unreadable"  # FFmpeg cannot open or demux it (not a media file, cut before the index)
TRUNCATED = "truncated"  # fewer packets or frames than the container announces, or a decode error
VARIABLE_FRAME_RATE = "variable_frame_rate"  # uneven frame timestamps while clips.vfr_policy is "reject"
ROTATED = "rotated"  # display-rotation metadata (decoders disagree on applying it)
FPS_TOO_LOW = "fps_too_low"  # the source frame rate is below the requested clips.fps
TOO_SHORT = "too_short"  # fewer (resampled) frames than one clip
POSE_UNAVAILABLE = "pose_unavailable"  # no usable keypoint file for this video, or it does not match the video
TOO_FEW_PERSON_FRAMES = "too_few_person_frames"  # a clip whose frames mostly show no person (clip level)
NO_CLIP_KEPT = "no_clip_kept"  # every clip of the video was rejected
ERROR = "error"  # an unexpected exception while processing this video (traceback in the log)

REASONS = (
    MISSING,
    NOT_VIDEO,
    UNREADABLE,
    TRUNCATED,
    VARIABLE_FRAME_RATE,
    ROTATED,
    FPS_TOO_LOW,
    TOO_SHORT,
    POSE_UNAVAILABLE,
    TOO_FEW_PERSON_FRAMES,
    NO_CLIP_KEPT,
    ERROR,
)


class VideoRejected(Exception):
    """Raised while processing a video that cannot (or should not) become samples.

    Args:
        reason: one of ``REASONS``.
        detail: what was seen, for a person reading ``rejects.jsonl``.
    """

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown reject reason {reason!r}; expected one of {REASONS}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Reject:
    """One line of ``rejects.jsonl``.

    Attributes:
        video: the video's path relative to the input (as listed in the manifest's sources).
        reason: one of ``REASONS``.
        detail: human-readable explanation.
        clip_index: the clip within the video for clip-level rejects, else None (the whole video).
    """

    video: str
    reason: str
    detail: str
    clip_index: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Reject:
        return cls(
            video=str(data["video"]),
            reason=str(data["reason"]),
            detail=str(data["detail"]),
            clip_index=None if data.get("clip_index") is None else int(data["clip_index"]),
        )

    def sort_key(self) -> tuple[str, int]:
        return (self.video, -1 if self.clip_index is None else self.clip_index)
