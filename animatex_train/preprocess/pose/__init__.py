"""Keypoints for data preparation: pluggable estimators (DWPose, mediapipe) and importers (official pkl, sidecar)."""

from __future__ import annotations

from pathlib import Path

from animatex_train.preprocess.pose.base import PoseEstimator, PoseImporter, SourcePoses, person_frames
from animatex_train.preprocess.pose.importers import OfficialPklImporter, SidecarImporter

__all__ = [
    "OfficialPklImporter",
    "PoseEstimator",
    "PoseImporter",
    "SidecarImporter",
    "SourcePoses",
    "build_pose_provider",
    "person_frames",
]


def build_pose_provider(
    method: str,
    *,
    det_model: str | None = None,
    pose_model: str | None = None,
    device: str = "auto",
    batch_size: int = 8,
    num_threads: int = 0,
    keep_face: bool = True,
    pkl_dir: str | None = None,
    sidecar_dir: Path | None = None,
    mediapipe_model_complexity: int = 1,
) -> PoseEstimator | PoseImporter:
    """The estimator or importer named by ``pose.method`` (heavy imports happen only for the one chosen)."""
    if method == "dwpose":
        from animatex_train.preprocess.pose.dwpose import DWPoseEstimator

        if det_model is None or pose_model is None:
            raise ValueError("pose.method=dwpose needs pose.det_model and pose.pose_model")
        return DWPoseEstimator(
            Path(det_model).expanduser(),
            Path(pose_model).expanduser(),
            device=device,
            batch_size=batch_size,
            keep_face=keep_face,
            num_threads=num_threads,
        )
    if method == "mediapipe":
        from animatex_train.preprocess.pose.blazepose import MediaPipePoseEstimator

        return MediaPipePoseEstimator(model_complexity=mediapipe_model_complexity)
    if method == "pkl":
        return OfficialPklImporter(Path(pkl_dir).expanduser() if pkl_dir else None, keep_face=keep_face)
    if method == "sidecar":
        return SidecarImporter(sidecar_dir, keep_face=keep_face)
    raise ValueError(f"pose.method: expected dwpose, mediapipe, pkl or sidecar, got {method!r}")
