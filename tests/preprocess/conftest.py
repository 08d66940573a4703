"""Fixtures for data-preparation tests: tiny DWPose ONNX files, real sample videos, a small prepare config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from animatex_train.encoders.clip import CLIPConfig
from animatex_train.encoders.vae import VAEConfig
from animatex_train.preprocess.config import ClipConfig, EncodersConfig, PoseConfig, PrepareConfig, ShardConfig
from animatex_train.preprocess.pose.tiny_dwpose import write_tiny_dwpose

REPO_ROOT = Path(__file__).resolve().parents[2]
VIDEOS = REPO_ROOT / "tests" / "fixtures" / "videos"
DANCE_SHORT = VIDEOS / "dance1_right.mp4"  # 32 frames, 8 fps, 768 x 1216
DANCE_LONG = VIDEOS / "dance_3.mp4"  # 153 frames, 24 fps, 512 x 758


@pytest.fixture(scope="session")
def tiny_dwpose(tmp_path_factory) -> tuple[Path, Path]:
    """Tiny stand-ins for yolox_l.onnx and dw-ll_ucoco_384.onnx (fixed batch 1, as released)."""
    return write_tiny_dwpose(tmp_path_factory.mktemp("dwpose"))


def make_config(videos: Path | str, output_dir: Path, det_pose: tuple[Path, Path] | None, **changes) -> PrepareConfig:
    """Small, fast settings: 8-frame clips at 8 fps, 64 x 48, tiny encoders, one shard per video."""
    pose = (
        PoseConfig(method="dwpose", det_model=str(det_pose[0]), pose_model=str(det_pose[1]))
        if det_pose
        else PoseConfig(method="sidecar")
    )
    config = PrepareConfig(
        videos=str(videos),
        output_dir=str(output_dir),
        encoders=EncodersConfig(
            vae=VAEConfig(tiny=True, encode_chunk_size=8), clip=CLIPConfig(tiny=True, tiny_embed_dim=32)
        ),
        clips=ClipConfig(num_frames=8, fps=8.0, resolutions_px=[(64, 48)], num_refs=3),
        pose=pose,
        shards=ShardConfig(target_size_mb=0.01),
        progress=False,
    )
    return replace(config, **changes)


def write_yaml(config: PrepareConfig, path: Path) -> Path:
    """The config as a YAML file for ``--config``."""
    path.write_text(yaml.safe_dump(json.loads(json.dumps(config.to_dict()))))  # tuples -> lists
    return path


def prepare_command(config_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "animatex_train.cli.prepare", "--config", str(config_path), *extra]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def run_prepare_subprocess(config_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        prepare_command(config_path, *extra),
        cwd=REPO_ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def shard_bytes(output_dir: Path) -> dict[str, bytes]:
    """Every final shard's bytes by file name."""
    return {p.name: p.read_bytes() for p in sorted(Path(output_dir).glob("shard-*.tar"))}


@pytest.fixture(scope="session")
def prep() -> SimpleNamespace:
    """The helpers above, for test modules (imported with --import-mode=importlib, they cannot import conftest)."""
    return SimpleNamespace(
        VIDEOS=VIDEOS,
        DANCE_SHORT=DANCE_SHORT,
        DANCE_LONG=DANCE_LONG,
        REPO_ROOT=REPO_ROOT,
        make_config=make_config,
        write_yaml=write_yaml,
        prepare_command=prepare_command,
        subprocess_env=subprocess_env,
        run_prepare_subprocess=run_prepare_subprocess,
        shard_bytes=shard_bytes,
    )
