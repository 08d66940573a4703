"""``PrepareConfig``: every setting of ``animatex-train prepare``, typed, documented and checked on load.

A YAML file (``--config prepare.yaml``) and flags (``--clips.num_frames 32``) fill the same dataclasses.
Units are in the names (``_px``, ``_frames``, ``_mb``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from animatex_train.encoders.clip import CLIPConfig
from animatex_train.encoders.vae import VAEConfig

Stage = Literal["pose", "shards", "merge"]
STAGES: tuple[str, ...] = ("pose", "shards", "merge")
PoseMethod = Literal["dwpose", "mediapipe", "pkl", "sidecar"]
Device = Literal["auto", "cpu", "cuda"]


def _check(ok: bool, key: str, expected: str, got: Any, fix: str = "") -> None:
    if not ok:
        raise ValueError(f"{key}: expected {expected}, got {got!r}" + (f"; {fix}" if fix else ""))


@dataclass
class ClipConfig:
    """How videos are cut into clips.

    Attributes:
        num_frames: frames per clip (Animate-X trains on 32).
        stride_frames: step between clip starts, in output frames; None = ``num_frames`` (no overlap).
        fps: output frame rate; source frames are picked deterministically (``sampling.source_indices``).
            None keeps the source rate.
        resolutions_px: ``[[height, width], ...]``: one entry = every clip at that size; several = aspect
            buckets (each video goes to the bucket closest to its aspect ratio). Multiples of 8 (the VAE).
        max_clips_per_video: at most this many clips per video, spread evenly over it; None = all.
        num_refs: reference candidates per clip (``ref{k}.jpg``), evenly spaced over the clip's frames that
            show a person.
        vfr_policy: variable-frame-rate videos: ``reject`` them, or sample them by ``timestamps``.
    """

    num_frames: int = 32
    stride_frames: int | None = None
    fps: float | None = None
    resolutions_px: list[tuple[int, int]] = field(default_factory=lambda: [(768, 512)])
    max_clips_per_video: int | None = None
    num_refs: int = 4
    vfr_policy: Literal["reject", "timestamps"] = "reject"

    def __post_init__(self) -> None:
        _check(self.num_frames >= 1, "clips.num_frames", ">= 1", self.num_frames)
        _check(self.stride_frames is None or self.stride_frames >= 1, "clips.stride_frames", ">= 1", self.stride_frames)
        _check(self.fps is None or self.fps > 0, "clips.fps", "> 0 or null (keep the source rate)", self.fps)
        _check(bool(self.resolutions_px), "clips.resolutions_px", "at least one [height, width]", self.resolutions_px)
        self.resolutions_px = [(int(h), int(w)) for h, w in self.resolutions_px]
        for h, w in self.resolutions_px:
            _check(
                h > 0 and w > 0 and h % 8 == 0 and w % 8 == 0,
                "clips.resolutions_px",
                "positive [height, width] multiples of 8 (the VAE downsamples 8x)",
                [h, w],
                "Animate-X uses [768, 512]",
            )
        _check(
            len(set(self.resolutions_px)) == len(self.resolutions_px),
            "clips.resolutions_px",
            "no duplicates",
            self.resolutions_px,
        )
        _check(
            self.max_clips_per_video is None or self.max_clips_per_video >= 1,
            "clips.max_clips_per_video",
            ">= 1 or null",
            self.max_clips_per_video,
        )
        _check(
            1 <= self.num_refs <= self.num_frames,
            "clips.num_refs",
            f"in [1, num_frames={self.num_frames}]",
            self.num_refs,
        )
        _check(
            self.vfr_policy in ("reject", "timestamps"), "clips.vfr_policy", "'reject' or 'timestamps'", self.vfr_policy
        )

    @property
    def stride(self) -> int:
        return self.stride_frames or self.num_frames


@dataclass
class PoseConfig:
    """Where keypoints come from, and which clips count as showing a person.

    Attributes:
        method: ``dwpose`` (onnxruntime, needs ``det_model`` and ``pose_model``), ``mediapipe`` (separate venv),
            ``pkl`` (official Animate-X ``.pkl`` files) or ``sidecar`` (``<stem>.pose.npy`` packed keypoints, the
            default: what the synthetic dataset and ``--stages pose`` write).
        det_model: path of ``yolox_l.onnx`` (dwpose).
        pose_model: path of ``dw-ll_ucoco_384.onnx`` (dwpose).
        device: where the ONNX models run: ``auto`` (CUDA when onnxruntime has it), ``cpu`` or ``cuda``.
        batch_size: frames per model call (when the ONNX batch axis is dynamic) and per estimator call.
        num_threads: onnxruntime intra-op threads; 0 = its default.
        pkl_dir: folder of the official ``.pkl`` files, mirroring the input folder; null = next to each video.
        sidecar_dir: folder of ``.pose.npy`` sidecars, mirroring the input folder; null = next to each video.
            ``--stages pose`` writes there (default ``<output_dir>/poses``).
        keep_face: store the 68 face points (DWPose, pkl, sidecar).
        mediapipe_model_complexity: 1 is the model bundled with mediapipe 0.10.21 (0 and 2 need a download).
        min_body_points: a frame shows a person when at least this many of its 18 body points are present.
        min_person_fraction: a clip is kept when at least this fraction of its frames shows a person.
    """

    method: PoseMethod = "sidecar"
    det_model: str | None = None
    pose_model: str | None = None
    device: Device = "auto"
    batch_size: int = 8
    num_threads: int = 0
    pkl_dir: str | None = None
    sidecar_dir: str | None = None
    keep_face: bool = True
    mediapipe_model_complexity: int = 1
    min_body_points: int = 4
    min_person_fraction: float = 0.5

    def __post_init__(self) -> None:
        methods = ("dwpose", "mediapipe", "pkl", "sidecar")
        _check(self.method in methods, "pose.method", f"one of {methods}", self.method)
        if self.method == "dwpose":
            for key in ("det_model", "pose_model"):
                value = getattr(self, key)
                _check(
                    value is not None and Path(value).expanduser().is_file(),
                    f"pose.{key}",
                    "the path of an existing ONNX file",
                    value,
                    "point pose.det_model at yolox_l.onnx and pose.pose_model at dw-ll_ucoco_384.onnx (DWPose "
                    "release), or choose another pose.method",
                )
        _check(self.device in ("auto", "cpu", "cuda"), "pose.device", "auto, cpu or cuda", self.device)
        _check(self.batch_size >= 1, "pose.batch_size", ">= 1", self.batch_size)
        _check(self.num_threads >= 0, "pose.num_threads", ">= 0", self.num_threads)
        _check(0 <= self.min_body_points <= 18, "pose.min_body_points", "in [0, 18]", self.min_body_points)
        _check(
            0.0 <= self.min_person_fraction <= 1.0, "pose.min_person_fraction", "in [0, 1]", self.min_person_fraction
        )


@dataclass
class EncodersConfig:
    """The frozen encoders that precompute what training reads.

    Attributes:
        vae: the SD 2.1 VAE: ``checkpoint`` path, or ``tiny: true`` (random weights) for tests and the demo.
            Required: a dataset made with the wrong VAE is silently useless, so there is no default.
        clip: the OpenCLIP ViT-H-14 image encoder: ``checkpoint`` path, or ``tiny: true``. Required.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        num_threads: torch CPU threads; 0 = torch's default.
    """

    vae: VAEConfig
    clip: CLIPConfig
    device: Device = "auto"
    num_threads: int = 0

    def __post_init__(self) -> None:
        _check(self.device in ("auto", "cpu", "cuda"), "encoders.device", "auto, cpu or cuda", self.device)
        _check(self.num_threads >= 0, "encoders.num_threads", ">= 0", self.num_threads)
        self.vae.require_weights("encoders.vae")
        self.clip.require_weights("encoders.clip")


@dataclass
class ShardConfig:
    """How samples are written.

    Attributes:
        target_size_mb: a shard is closed at the first video boundary at or past this size (MiB), so a shard
            can exceed it by one video's clips; that rule keeps reruns and resumed runs byte-identical.
        jpeg_quality: quality of the ``ref{k}.jpg`` reference frames (libjpeg, fixed for determinism).
        write_frames_mp4: also store the clip's frames as ``frames.mp4`` (H.264) for evaluation and checks.
        mp4_crf: x264 constant rate factor of ``frames.mp4`` (lower = better; 18 is visually lossless).
        verify_hashes: when merging, re-read every shard and check its sha256 against the journal.
    """

    target_size_mb: float = 512.0
    jpeg_quality: int = 95
    write_frames_mp4: bool = False
    mp4_crf: int = 18
    verify_hashes: bool = True

    def __post_init__(self) -> None:
        _check(self.target_size_mb > 0, "shards.target_size_mb", "> 0", self.target_size_mb)
        _check(1 <= self.jpeg_quality <= 100, "shards.jpeg_quality", "in [1, 100]", self.jpeg_quality)
        _check(0 <= self.mp4_crf <= 51, "shards.mp4_crf", "in [0, 51]", self.mp4_crf)

    @property
    def target_bytes(self) -> int:
        return int(self.target_size_mb * 1024 * 1024)


@dataclass
class PrepareConfig:
    """``animatex-train prepare``: videos -> keypoints, CLIP features, VAE latents -> WebDataset shards.

    Attributes:
        videos: a folder (searched recursively), a glob (``'clips/**/*.mp4'``), a list file (``.txt``) or one
            video; formats mp4, mov, webm, mkv.
        output_dir: where shards, journals, ``manifest.json`` and ``rejects.jsonl`` go.
        encoders: VAE and CLIP (required).
        name: dataset name recorded in the manifest.
        metadata: optional CSV/JSONL with columns ``video``, ``split``, ``source``, ``licence``.
        stages: ``all``, or a comma-separated subset of ``pose`` (keypoints -> sidecars only), ``shards``
            (everything -> shards; computes keypoints in memory unless ``pose.method`` is ``sidecar``/``pkl``)
            and ``merge`` (journals -> manifest). ``all`` = shards, plus merge when the world size is 1.
        rank: this process's rank; null = from torchrun (``RANK``) or a Slurm array, else 0.
        world_size: number of ranks; null = from torchrun (``WORLD_SIZE``) or a Slurm array, else 1.
        clips: clip cutting.
        pose: keypoints (default: ``<stem>.pose.npy`` sidecars next to the videos).
        shards: shard writing.
        progress: show progress bars.
        fail_fast: re-raise unexpected exceptions instead of recording them as ``error`` rejects (debugging);
            expected problems (unreadable video, no person, ...) are still rejected with their reason.
    """

    videos: str
    output_dir: str
    encoders: EncodersConfig
    name: str = "animatex"
    metadata: str | None = None
    stages: str = "all"
    rank: int | None = None
    world_size: int | None = None
    clips: ClipConfig = field(default_factory=ClipConfig)
    pose: PoseConfig = field(default_factory=PoseConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    progress: bool = True
    fail_fast: bool = False

    def __post_init__(self) -> None:
        _check(bool(self.videos), "videos", "a folder, glob, list file or video path", self.videos)
        _check(bool(self.output_dir), "output_dir", "a folder path", self.output_dir)
        self.stage_list()  # validates
        _check(self.rank is None or self.rank >= 0, "rank", ">= 0 or null", self.rank)
        _check(self.world_size is None or self.world_size >= 1, "world_size", ">= 1 or null", self.world_size)
        if "pose" in self.stage_list() and self.pose.method not in ("dwpose", "mediapipe"):
            raise ValueError(
                f"stages: the pose stage estimates keypoints, but pose.method={self.pose.method!r} reads them from "
                "files; use pose.method=dwpose or mediapipe with --stages pose"
            )

    def stage_list(self, world_size: int = 1) -> list[str]:
        """The stages to run, in order; ``all`` means shards (+ merge when ``world_size`` is 1)."""
        if self.stages.strip() == "all":
            return ["shards", "merge"] if world_size == 1 else ["shards"]
        names = [s.strip() for s in self.stages.split(",") if s.strip()]
        for name in names:
            _check(name in STAGES, "stages", f"'all' or a comma-separated subset of {STAGES}", self.stages)
        _check(bool(names), "stages", f"'all' or a comma-separated subset of {STAGES}", self.stages)
        return [s for s in STAGES if s in names]

    def sidecar_folder(self) -> Path | None:
        """Where sidecars are read (and written by the pose stage)."""
        if self.pose.sidecar_dir is not None:
            return Path(self.pose.sidecar_dir).expanduser()
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
