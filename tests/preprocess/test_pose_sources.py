"""Keypoints from files: the official pkl (restricted unpickler), sidecars, and the standalone pose stage."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from animatex_train.data.format.keypoints import MISSING
from animatex_train.data.format.manifest import DatasetManifest
from animatex_train.data.format.schema import decode_clip
from animatex_train.preprocess.pose.blazepose import blazepose_to_packed
from animatex_train.preprocess.pose.importers import load_official_pkl
from animatex_train.preprocess.prepare import prepare_dataset
from animatex_train.preprocess.sampling import CropGeometry


def _records(output_dir: Path) -> dict:
    manifest = DatasetManifest.load(output_dir)
    return {
        r.key: r
        for path in manifest.shard_paths()
        for r in map(decode_clip, wds.WebDataset(str(path), shardshuffle=False))
    }


def _official_pkl(num_frames: int, size: tuple[int, int, int], seed: int) -> dict:
    """What process_data.py pickles: normalised keypoints with -1 for low scores."""
    rng = np.random.default_rng(seed)
    bodies = rng.uniform(0.05, 0.95, (num_frames, 18, 2))
    bodies[rng.random((num_frames, 18)) < 0.2] = -1
    faces = rng.uniform(0.3, 0.6, (num_frames, 68, 2))
    hands = rng.uniform(0.1, 0.9, (num_frames, 2, 21, 2))
    hands[:, 1] = -1  # right hand never seen
    return {
        "bodies": bodies,
        "body_indices": np.where(bodies[..., 0] < 0, -1, 1).astype(np.float64),
        "faces": faces,
        "hands": hands,
        "size": size,
        "fps": 8,
    }


class _OpenPayload:
    """Unpickling this calls open(canary, 'w'), i.e. creates a file: arbitrary code execution."""

    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self):
        return (open, (str(self.canary), "w"))


class _ShellPayload(_OpenPayload):
    """Unpickling this runs a shell command that creates the file."""

    def __reduce__(self):
        return (os.system, (f"touch {self.canary}",))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_official_pkl_round_trip(tmp_path, prep, protocol):
    inputs = tmp_path / "videos"
    inputs.mkdir()
    shutil.copy(prep.DANCE_SHORT, inputs / "dance.mp4")
    official = _official_pkl(32, (1216, 768, 3), seed=protocol)
    (inputs / "dance.pkl").write_bytes(pickle.dumps(official, protocol=protocol))
    config = prep.make_config(inputs, tmp_path / "out", None)
    config.pose.method, config.pose.min_body_points = "pkl", 1
    manifest = prepare_dataset(config)
    assert manifest.num_samples == 4 and manifest.encoders["pose"].startswith("pkl")
    geometry = CropGeometry.fit((1216, 768), (64, 48))  # the importer keeps float32, as the packed format does
    for record in _records(tmp_path / "out").values():
        rows = record.meta.frame_indices
        assert record.meta.pose_source == "dwpose-pkl"
        body = np.where(official["bodies"][rows] < 0, MISSING, official["bodies"][rows]).astype(np.float32)
        np.testing.assert_array_equal(record.pose.body, geometry.transform_points(body))
        np.testing.assert_array_equal(
            record.pose.hands[:, 0], geometry.transform_points(official["hands"][rows, 0].astype(np.float32))
        )
        assert (record.pose.hands[:, 1] == MISSING).all() and (record.pose.feet == MISSING).all()
        np.testing.assert_array_equal(
            record.pose.face, geometry.transform_points(official["faces"][rows].astype(np.float32))
        )


@pytest.mark.parametrize("payload", [_OpenPayload, _ShellPayload])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, prep, payload):
    canary = tmp_path / "canary"
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"bodies": payload(canary), "size": (1, 1, 3)}))
    with pytest.raises(ValueError, match=r"refusing to load (io\.open|posix\.system)"):
        load_official_pkl(bad)
    assert not canary.exists()
    # Through the pipeline: the video is rejected with the reason, the run goes on, the payload never runs.
    inputs = tmp_path / "videos"
    inputs.mkdir()
    shutil.copy(prep.DANCE_SHORT, inputs / "good.mp4")
    shutil.copy(prep.DANCE_SHORT, inputs / "evil.mp4")
    (inputs / "good.pkl").write_bytes(pickle.dumps(_official_pkl(32, (1216, 768, 3), 0)))
    shutil.copy(bad, inputs / "evil.pkl")
    config = prep.make_config(inputs, tmp_path / "out", None)
    config.pose.method, config.pose.min_body_points = "pkl", 1
    manifest = prepare_dataset(config)
    assert [v.video for v in manifest.videos] == ["good.mp4"]
    reject = json.loads((tmp_path / "out" / "rejects.jsonl").read_text())
    assert reject["video"] == "evil.mp4" and reject["reason"] == "pose_unavailable" and "refusing" in reject["detail"]
    assert not canary.exists()


def test_pkl_that_does_not_match_the_video_is_rejected(tmp_path, prep):
    inputs = tmp_path / "videos"
    inputs.mkdir()
    shutil.copy(prep.DANCE_SHORT, inputs / "short.mp4")
    (inputs / "short.pkl").write_bytes(pickle.dumps(_official_pkl(30, (1216, 768, 3), 0)))
    config = prep.make_config(inputs, tmp_path / "out", None)
    config.pose.method = "pkl"
    prepare_dataset(config)
    reject = json.loads((tmp_path / "out" / "rejects.jsonl").read_text())
    assert reject["reason"] == "pose_unavailable" and "30 frames, the video has 32" in reject["detail"]


def test_pose_stage_then_sidecars_equals_in_memory_dwpose(tmp_path, prep, tiny_dwpose):
    inputs = tmp_path / "videos"
    inputs.mkdir()
    shutil.copy(prep.DANCE_SHORT, inputs / "dance.mp4")
    in_memory = prepare_dataset(prep.make_config(inputs, tmp_path / "direct", tiny_dwpose))

    staged = tmp_path / "staged"
    pose_only = prep.make_config(inputs, staged, tiny_dwpose, stages="pose")
    assert prepare_dataset(pose_only) is None
    sidecar = staged / "poses" / "dance.pose.npy"
    info = json.loads((staged / "poses" / "dance.pose.json").read_text())
    assert np.load(sidecar, allow_pickle=False).shape == (32, 130, 2)
    assert info["frames"] == list(range(32)) and info["pose_source"] == "dwpose"
    assert not list(staged.glob("shard-*"))
    mtime = sidecar.stat().st_mtime_ns
    prepare_dataset(pose_only)  # a rerun skips the finished video
    assert sidecar.stat().st_mtime_ns == mtime

    rest = prep.make_config(inputs, staged, None)
    rest.pose.sidecar_dir = str(staged / "poses")
    from_sidecars = prepare_dataset(rest)
    direct, via_sidecar = _records(tmp_path / "direct"), _records(staged)
    assert direct.keys() == via_sidecar.keys() and from_sidecars.num_samples == in_memory.num_samples
    for key in direct:
        np.testing.assert_array_equal(direct[key].pose.to_array(), via_sidecar[key].pose.to_array())
        np.testing.assert_array_equal(direct[key].latent_mean, via_sidecar[key].latent_mean)
        assert via_sidecar[key].meta.pose_source == "dwpose"

    # Both stages in one run: the shards stage reads the sidecars the pose stage just wrote.
    combined = prepare_dataset(prep.make_config(inputs, tmp_path / "combined", tiny_dwpose, stages="pose,shards,merge"))
    assert (
        combined.encoders["pose"].startswith("sidecar")
        and (tmp_path / "combined" / "poses" / "dance.pose.npy").exists()
    )
    for key, record in _records(tmp_path / "combined").items():
        np.testing.assert_array_equal(record.pose.to_array(), direct[key].pose.to_array())

    # A sidecar made for other clip settings (here: one clip) does not cover every frame: rejected, not filled in.
    partial = tmp_path / "partial"
    shutil.copytree(staged / "poses", partial)
    (partial / "dance.pose.json").write_text(json.dumps({**info, "frames": list(range(8))}))
    other = prep.make_config(inputs, tmp_path / "other", None)
    other.pose.sidecar_dir = str(partial)
    assert prepare_dataset(other).num_samples == 0
    reject = json.loads((tmp_path / "other" / "rejects.jsonl").read_text())
    assert reject["reason"] == "pose_unavailable" and "covers 8 of the 32 frames" in reject["detail"]


def test_clips_without_a_person_are_rejected(tmp_path, prep):
    inputs = tmp_path / "videos"
    inputs.mkdir()
    shutil.copy(prep.DANCE_SHORT, inputs / "dance.mp4")
    points = np.full((32, 130, 2), MISSING, dtype=np.float32)
    points[:8, :18] = 0.5  # only the first clip's frames show a person
    np.save(inputs / "dance.pose.npy", points)
    manifest = prepare_dataset(prep.make_config(inputs, tmp_path / "out", None))
    assert manifest.num_samples == 1 and manifest.shards[0].keys == ["dance-c00000"]
    rejected = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["clip_index"], r["reason"]) for r in rejected] == [(i, "too_few_person_frames") for i in (1, 2, 3)]


def test_blazepose_mapping_to_openpose():
    landmarks = np.zeros((33, 3), dtype=np.float32)
    landmarks[:, 0] = np.linspace(0.1, 0.9, 33)
    landmarks[:, 1] = 0.5
    landmarks[:, 2] = 0.9
    landmarks[8, 2] = 0.1  # right ear not visible
    packed = blazepose_to_packed(landmarks)
    x = landmarks[:, 0]
    assert packed[0, 0] == x[0]  # nose
    assert packed[1, 0] == pytest.approx((x[11] + x[12]) / 2)  # neck
    assert [packed[i, 0] for i in (2, 3, 4, 5, 6, 7)] == [x[12], x[14], x[16], x[11], x[13], x[15]]
    assert [packed[i, 0] for i in (8, 9, 10, 11, 12, 13)] == [x[24], x[26], x[28], x[23], x[25], x[27]]
    assert [packed[i, 0] for i in (14, 15, 17)] == [x[5], x[2], x[7]] and (packed[16] == MISSING).all()
    assert [packed[18, 0], packed[19, 0]] == [x[31], x[32]]  # left toes, right toes
    assert (packed[20:] == MISSING).all()  # no 21-point hands or face from BlazePose
    assert (blazepose_to_packed(None) == MISSING).all()


def test_mediapipe_estimator_on_a_real_frame(prep):
    pytest.importorskip("mediapipe", reason="mediapipe lives in a separate venv (protobuf<5); see data/SCHEMA.md")
    from animatex_train.preprocess.pose.blazepose import MediaPipePoseEstimator
    from animatex_train.preprocess.video import decode_frames, probe_video

    info = probe_video(prep.DANCE_LONG)
    frames = np.stack([f for _, f in decode_frames(prep.DANCE_LONG, info, np.array([0, 40]))])
    pose = MediaPipePoseEstimator().estimate(frames)
    assert pose.num_frames == 2 and pose.body_visible.sum(axis=1).min() >= 10  # a full-body dancer
