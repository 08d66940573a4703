"""``animatex-train animate`` from the command line: one job with the official-layout checkpoint, and errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from animatex_train.cli.animate import build_parser, settings_from_args
from animatex_train.cli.animate import main as animate_main


def test_one_job_with_the_official_layout_checkpoint(inf, weights, dwpose, tmp_path):
    out = tmp_path / "cli.mp4"
    command = [
        sys.executable,
        "-m",
        "animatex_train",
        "animate",
        "--ref",
        str(inf.MEDIA / "landscape.jpg"),
        "--video",
        str(inf.MEDIA / "dance_1s.mp4"),
        "-o",
        str(out),
        "--checkpoint",
        str(weights.official),
        "--model_config",
        str(weights.model_config),
        "--tiny",
        "--dwpose_det",
        str(dwpose[0]),
        "--dwpose_pose",
        str(dwpose[1]),
        "--size",
        "64x128",
        "--frames",
        "3",
        "--target_fps",
        "12",
        "--steps",
        "2",
        "--layout",
        "ref-pose-result",
        "--device",
        "cpu",
        "--cache_dir",
        str(tmp_path / "c"),
        "--no_progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(inf.REPO)}
    run = subprocess.run(command, cwd=inf.REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "3 frames at 12 fps (0.25 s)" in run.stdout
    meta = json.loads((tmp_path / "cli.meta.json").read_text())
    assert meta["checkpoint"]["kind"] == "official" and meta["frames"]["stride"] == 2
    assert meta["settings"]["output"]["layout"] == "ref-pose-result" and meta["conditioning"]["canvas"] == [64, 128]
    assert list((tmp_path / "c").glob("*.npy"))  # DWPose results cached by content hash
    again = subprocess.run(command, cwd=inf.REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "poses from the cache" in again.stderr


def test_flags_map_to_settings_and_errors_name_them(capsys, tmp_path):
    parser = build_parser()
    args = parser.parse_args(
        [
            "--ref",
            "a.png",
            "--video",
            "b.mp4",
            "-o",
            "o.mp4",
            "--tiny",
            "--size",
            "512x768",
            "--frames",
            "all",
            "--guidance",
            "1",
            "--window",
            "32",
            "--overlap",
            "8",
            "--pose_scale",
            "1.1,0.9",
            "--bg",
            "0,0,0",
            "--no_audio",
        ]
    )
    settings = settings_from_args(args)
    assert settings.inputs.size == (512, 768) and settings.inputs.frames is None
    assert settings.sampling.sampler.guidance_scale == 1.0 and settings.sampling.window == 32
    assert settings.inputs.pose_scale == (1.1, 0.9) and settings.inputs.bg == (0, 0, 0) and not settings.output.audio
    code = animate_main(
        ["--ref", "a.png", "--video", "b.mp4", "-o", str(tmp_path / "o.mp4"), "--tiny", "--size", "100x64"]
    )
    assert code == 2 and "--size: expected HEIGHTxWIDTH, multiples of 64" in capsys.readouterr().err


def test_dry_run_align_writes_the_preview_and_stops(inf, weights, dwpose, tmp_path, capsys):
    out = tmp_path / "never.mp4"
    code = animate_main(
        [
            "--ref",
            str(inf.MEDIA / "portrait.jpg"),
            "--video",
            str(inf.MEDIA / "dance_1s.mp4"),
            "-o",
            str(out),
            "--checkpoint",
            str(weights.export),
            "--tiny",
            "--dwpose_det",
            str(dwpose[0]),
            "--dwpose_pose",
            str(dwpose[1]),
            "--size",
            "128x64",
            "--frames",
            "2",
            "--align",
            "musepose",
            "--device",
            "cpu",
            "--cache_dir",
            "",
            "--dry_run_align",
        ]
    )
    assert code == 0 and "alignment preview (musepose)" in capsys.readouterr().out
    assert (tmp_path / "never.align.png").is_file() and not out.exists()
