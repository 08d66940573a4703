"""The synthetic dataset generator: determinism, keypoint validity and agreement with pixels, motion, files."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest

from animatex_train.cli.synth import main as synthetic_main
from animatex_train.data.format.keypoints import BODY, PoseSequence, visible
from animatex_train.data.synthetic.dataset import (
    LICENCE,
    METADATA_FILE,
    SyntheticDatasetConfig,
    design_clip,
    render_clip,
    write_synthetic_dataset,
)
from animatex_train.data.synthetic.proportions import BODY_STYLES

REPO_ROOT = Path(__file__).resolve().parents[2]
SIZE = (256, 192)
STYLES = sorted(BODY_STYLES)


def _pixels(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(n, 2)`` normalised keypoints to integer ``(n, 2)`` pixel (x, y) positions."""
    return np.round(points * np.array([size[1], size[0]])).astype(int)


def _distance(pose: PoseSequence, a: str, b: str) -> np.ndarray:
    """``(t,)`` pixel distance between two body joints."""
    scale = np.array([pose.frame_size[1], pose.frame_size[0]])
    return np.linalg.norm((pose.body[:, BODY[a]] - pose.body[:, BODY[b]]) * scale, axis=-1)


def _small_config(**changes) -> SyntheticDatasetConfig:
    values = dict(num_videos=3, num_val_videos=1, num_frames=10, height_px=128, width_px=96, seed=3)
    return SyntheticDatasetConfig(**{**values, **changes})


def test_render_clip_is_deterministic_and_depends_on_the_seed():
    frames, pose = render_clip("human", 11, 12, SIZE, hand_hide_rate=0.2, face_hide_rate=0.2)
    frames_again, pose_again = render_clip("human", 11, 12, SIZE, hand_hide_rate=0.2, face_hide_rate=0.2)
    assert frames.shape == (12, *SIZE, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames, frames_again)
    np.testing.assert_array_equal(pose.to_array(), pose_again.to_array())
    other_frames, other_pose = render_clip("human", 12, 12, SIZE)
    assert np.abs(other_frames.astype(int) - frames).mean() > 5.0
    assert not np.array_equal(other_pose.body, pose.body)


def test_keypoint_dropout_changes_keypoints_only():
    frames, pose = render_clip("fox", 4, 40, SIZE)
    dropped_frames, dropped = render_clip("fox", 4, 40, SIZE, hand_hide_rate=0.5, face_hide_rate=0.5)
    np.testing.assert_array_equal(frames, dropped_frames)  # dropout has its own random stream
    hand_hidden = ~visible(dropped.hands).any(axis=2)  # (t, 2)
    assert 0.3 < hand_hidden.mean() < 0.7
    nose_hidden = ~visible(dropped.body[:, BODY["nose"]])
    assert 0.3 < nose_hidden.mean() < 0.7
    kept = visible(dropped.body)
    np.testing.assert_array_equal(dropped.body[kept], pose.body[kept])


@pytest.mark.parametrize("style", STYLES)
def test_keypoints_follow_the_format_and_show_the_whole_body(style):
    frames, pose = render_clip(style, 21, 24, SIZE)
    packed = pose.to_array()
    assert packed.shape == (24, 130, 2) and packed.dtype == np.float32
    restored = PoseSequence.from_array(packed, SIZE, name=style)  # validates range and (-1, -1) markers
    np.testing.assert_array_equal(restored.body, pose.body)
    assert pose.hands.shape == (24, 2, 21, 2) and pose.feet.shape == (24, 2, 2) and pose.face is None
    assert pose.body_visible.mean() > 0.9
    assert pose.body_visible[:, [BODY["neck"], BODY["right_hip"], BODY["left_hip"]]].all()
    assert visible(pose.hands).mean() > 0.8


@pytest.mark.parametrize("style", STYLES)
def test_keypoints_lie_on_the_character(style):
    for seed in (0, 1, 2):
        frames, pose = render_clip(style, seed, 16, SIZE)
        background = design_clip(style, seed, SIZE).background.astype(int)
        packed = pose.to_array()[:, :62]  # body, feet, hands (no face)
        for index in range(len(frames)):
            points = packed[index][visible(packed[index])]
            x, y = _pixels(points, SIZE).T
            difference = np.abs(frames[index, y, x].astype(int) - background[y, x]).max(axis=1)
            assert difference.min() >= 32, f"{style} seed {seed} frame {index}: a keypoint lies on the background"
        # The check can fail: the character covers only part of the frame.
        assert (np.abs(frames[0].astype(int) - background).max(axis=-1) >= 32).mean() < 0.6


def test_styles_differ_in_proportions():
    def ratios(style: str) -> tuple[float, float]:
        arm, torso, eyes = [], [], []
        for seed in range(4):
            _, pose = render_clip(style, seed, 8, SIZE)
            arm.append(_distance(pose, "left_shoulder", "left_elbow") + _distance(pose, "left_elbow", "left_wrist"))
            hips = (pose.body[:, BODY["left_hip"]] + pose.body[:, BODY["right_hip"]]) / 2
            scale = np.array([SIZE[1], SIZE[0]])
            torso.append(np.linalg.norm((pose.body[:, BODY["neck"]] - hips) * scale, axis=-1))
            eyes.append(_distance(pose, "left_eye", "right_eye"))
        arm, torso, eyes = np.concatenate(arm), np.concatenate(torso), np.concatenate(eyes)
        return float(np.median(arm / torso)), float(np.median(eyes / torso))

    human_arm, human_head = ratios("human")
    teapot_arm, _ = ratios("teapot")
    _, fox_head = ratios("fox")
    assert human_arm > 0.85 and teapot_arm < 0.6, (human_arm, teapot_arm)
    assert fox_head > 1.5 * human_head, (fox_head, human_head)


@pytest.mark.parametrize("style", STYLES)
def test_motion_is_smooth_but_not_static(style):
    for seed in range(4):
        _, pose = render_clip(style, seed, 48, SIZE)
        both = pose.body_visible[1:] & pose.body_visible[:-1]
        steps = np.linalg.norm(pose.body[1:] - pose.body[:-1], axis=-1)[both]  # normalised units per frame
        assert steps.max() < 0.15, f"{style} seed {seed}: a joint jumps {steps.max():.3f} of the frame"
        assert steps.mean() > 0.004, f"{style} seed {seed}: the character barely moves"
        for wrist in ("left_wrist", "right_wrist"):
            track = pose.body[:, BODY[wrist]][pose.body_visible[:, BODY[wrist]]]
            assert np.ptp(track, axis=0).max() > 0.04, f"{style} seed {seed}: {wrist} does not move"


def test_written_dataset_is_reproducible_and_decodable(tmp_path):
    config = _small_config()
    videos = write_synthetic_dataset(tmp_path / "a", config)
    write_synthetic_dataset(tmp_path / "b", config)
    names = sorted(path.name for path in (tmp_path / "a").iterdir())
    assert names == sorted(path.name for path in (tmp_path / "b").iterdir())
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name

    records = [json.loads(line) for line in (tmp_path / "a" / METADATA_FILE).read_text().splitlines()]
    assert [record["video"] for record in records] == [path.name for path in videos]
    assert [record["split"] for record in records] == ["train", "train", "val"]
    styles = [record["source"].split("(style: ")[1].rstrip(")") for record in records]
    assert styles == list(config.styles)
    assert all(record["licence"] == LICENCE for record in records)
    for index, video in enumerate(videos):
        with av.open(str(video)) as container:
            decoded = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
        assert decoded.shape == (config.num_frames, config.height_px, config.width_px, 3)
        frames, pose = render_clip(
            styles[index],
            config.video_seed(index),
            config.num_frames,
            (config.height_px, config.width_px),
            config.fps,
            config.hand_hide_rate,
            config.face_hide_rate,
        )
        assert np.abs(decoded.astype(int) - frames).mean() < 6.0  # right colour matrix, no frame shifted
        sidecar = np.load(video.with_name(video.stem + ".pose.npy"), allow_pickle=False)
        assert sidecar.shape == (config.num_frames, 130, 2) and sidecar.dtype == np.float32
        np.testing.assert_array_equal(sidecar, pose.to_array())


def test_different_dataset_seeds_give_different_videos(tmp_path):
    first = write_synthetic_dataset(tmp_path / "a", _small_config(num_videos=2))
    second = write_synthetic_dataset(tmp_path / "b", _small_config(num_videos=2, seed=4))
    assert first[0].read_bytes() != second[0].read_bytes()


def test_embedded_dataset_recipe_is_valid():
    config = SyntheticDatasetConfig.from_yaml(REPO_ROOT / "data" / "embedded_dataset.yaml")
    assert len(set(config.styles)) >= 2 and config.num_val_videos >= 1
    # Small enough for the CPU demo: about 15 videos of a few seconds at a modest size.
    assert config.num_videos * config.num_frames * config.height_px * config.width_px <= 16 * 64 * 256 * 192


def test_config_errors_name_the_problem(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("num_videos: 4\nnum_frame: 8\n")
    with pytest.raises(ValueError, match="num_frame"):
        SyntheticDatasetConfig.from_yaml(recipe)
    with pytest.raises(ValueError, match="even"):
        _small_config(width_px=95)
    with pytest.raises(ValueError, match="num_val_videos"):
        _small_config(num_videos=2, num_val_videos=2)
    with pytest.raises(ValueError, match="styles"):
        _small_config(styles=("human", "robot"))
    assert replace(_small_config(), styles=["human"]).styles == ("human",)  # YAML lists are stored as tuples
    with pytest.raises(ValueError, match="unknown body style"):
        render_clip("robot", 0, 4, SIZE)


def test_cli_writes_the_dataset(tmp_path, capsys):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("num_frames: 6\nheight_px: 64\nwidth_px: 64\nstyles: [teapot]\n")
    out = tmp_path / "out"
    status = synthetic_main(["--out", str(out), "--config", str(recipe), "--num_videos", "2", "--num_val_videos", "1"])
    assert status == 0 and "wrote 2 videos" in capsys.readouterr().out
    assert sorted(path.name for path in out.glob("*.mp4")) == ["synth_0000.mp4", "synth_0001.mp4"]
    assert synthetic_main(["--out", str(out), "--config", str(recipe), "--num_videos", "1"]) == 2
    assert "num_val_videos" in capsys.readouterr().err
