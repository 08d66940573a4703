"""Anchor pool: full-body sampling, safe files (no pickle), anthropomorphic anchors, start-up errors, the CLI."""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from animatex_train.cli.anchor_pool import main as anchor_pool_main
from animatex_train.data.epi.anchor_pool import (
    AnchorPool,
    AnchorPoolError,
    build_anchor_pool,
    is_full_body,
    iter_shard_poses,
)
from animatex_train.data.epi.preview import demo_pose_sequence
from animatex_train.data.format.keypoints import BODY, PoseSequence, visible
from animatex_train.data.format.schema import ClipMeta


def _with_missing(pose: PoseSequence, frames: slice, joints: list[str]) -> PoseSequence:
    body = pose.body.copy()
    for joint in joints:
        body[frames, BODY[joint]] = -1.0
    return PoseSequence(body, pose.feet, pose.hands, pose.face, pose.frame_size)


def test_full_body_criterion():
    pose = demo_pose_sequence(6, seed=1, body_scale=0.7)
    assert is_full_body(pose.body).all()
    for joint in ("nose", "neck", "right_shoulder", "left_hip"):
        assert not is_full_body(_with_missing(pose, slice(None), [joint]).body).any(), joint
    one_leg_joint = _with_missing(pose, slice(None), ["left_knee"])
    assert is_full_body(one_leg_joint.body).all()  # the left ankle still shows the leg
    assert not is_full_body(_with_missing(pose, slice(None), ["left_knee", "left_ankle"]).body).any()
    assert not is_full_body(pose.body, min_visible=19).any()


def test_build_samples_valid_frames_deterministically():
    clips = [demo_pose_sequence(10, seed=s, body_scale=0.7) for s in range(12)]
    clips[3] = _with_missing(clips[3], slice(None), ["neck"])  # no eligible frame at all
    clips[4] = _with_missing(clips[4], slice(0, 9), ["right_hip"])  # only frame 9 is eligible
    named = [(f"clip{i}", clip) for i, clip in enumerate(clips)]
    pool = build_anchor_pool(named, num_anchors=8, seed=5)
    again = build_anchor_pool(named, num_anchors=8, seed=5)
    other = build_anchor_pool(named, num_anchors=8, seed=6)
    assert len(pool) == 8
    np.testing.assert_array_equal(pool.points, again.points)
    assert pool.provenance == again.provenance and pool.provenance != other.provenance
    sources = [p.split("#")[0] for p in pool.provenance]
    assert len(set(sources)) == len(sources)  # at most one anchor per clip by default
    assert "clip3" not in sources
    assert all(p == "clip4#frame9" for p in pool.provenance if p.startswith("clip4#"))
    for i in range(len(pool)):
        assert is_full_body(pool.anchor(i).body).all()
    assert len(build_anchor_pool(named, num_anchors=100, seed=0, max_per_sequence=3)) == 10 * 3 + 1


def test_empty_pool_is_a_start_up_error(tmp_path):
    with pytest.raises(AnchorPoolError, match="empty anchor pool is an error at start-up"):
        AnchorPool(np.zeros((0, 130, 2), np.float32), np.zeros((0, 2)), ())
    headless = [_with_missing(demo_pose_sequence(4, seed=s), slice(None), ["neck"]) for s in range(3)]
    with pytest.raises(AnchorPoolError, match="none of 3 clips has a full-body frame"):
        build_anchor_pool(headless, num_anchors=4, seed=0)
    np.save(tmp_path / "empty.npy", np.zeros((0, 130, 2), np.float32))
    (tmp_path / "empty.json").write_text(
        json.dumps({"format": "animatex-anchor-pool", "version": 1, "frame_sizes": [], "provenance": []})
    )
    with pytest.raises(AnchorPoolError, match="empty anchor pool"):
        AnchorPool.load(tmp_path / "empty.npy")
    with pytest.raises(AnchorPoolError, match="need both"):
        AnchorPool.load(tmp_path / "absent.npy")


def test_anchor_without_neck_is_rejected():
    points = demo_pose_sequence(1, seed=0).to_array()
    points[0, BODY["neck"]] = -1.0
    with pytest.raises(AnchorPoolError, match=r"anchor 0 \(cartoon\): the neck is missing"):
        AnchorPool(points, [(768, 512)], ("cartoon",))


def test_save_load_round_trip_without_pickle(tmp_path):
    clips = [demo_pose_sequence(3, (640, 480), seed=s, body_scale=0.7) for s in range(4)]
    pool = build_anchor_pool(clips, num_anchors=4, seed=1)
    pool.save(tmp_path / "pool.npy")
    raw = np.load(tmp_path / "pool.npy", allow_pickle=False)
    assert raw.dtype == np.float32 and raw.shape == (4, 130, 2)
    sidecar = json.loads((tmp_path / "pool.json").read_text())
    assert sidecar["frame_sizes"] == [[640, 480]] * 4 and sidecar["provenance"] == list(pool.provenance)
    loaded = AnchorPool.load(tmp_path / "pool.npy")
    np.testing.assert_array_equal(loaded.points, pool.points)
    assert loaded.provenance == pool.provenance and loaded.anchor(2).frame_size == (640, 480)


def test_add_from_files(tmp_path):
    base = build_anchor_pool([demo_pose_sequence(2, seed=0, body_scale=0.7)], num_anchors=1, seed=0)
    body = demo_pose_sequence(1, (1000, 800), seed=3).body[0]
    bare = [list(map(float, p)) if visible(p) else None for p in body]
    (tmp_path / "bare.json").write_text(json.dumps(bare))
    in_pixels = {"frame_size": [1000, 800], "units": "pixels", "body": (body * [800, 1000]).tolist()}
    (tmp_path / "pixels.json").write_text(json.dumps([in_pixels, in_pixels]))
    np.save(tmp_path / "cartoon.npy", demo_pose_sequence(2, seed=9).to_array())
    pool = base.add_from_files([tmp_path / "bare.json", tmp_path / "pixels.json", tmp_path / "cartoon.npy"])
    assert len(pool) == 1 + 1 + 2 + 2
    assert pool.frame_sizes.tolist()[1:4] == [[768, 512], [1000, 800], [1000, 800]]
    np.testing.assert_allclose(pool.points[2, :18], body, atol=1e-6)  # pixels were normalised
    np.testing.assert_array_equal(pool.points[1, :18], body)
    assert (pool.points[1, 18:] == -1).all()  # a body-only anchor has no feet, hands or face
    assert pool.provenance[4].endswith("cartoon.npy#0")
    with pytest.raises(AnchorPoolError, match="expected a list of 18 body points"):
        (tmp_path / "short.json").write_text(json.dumps(bare[:5]))
        AnchorPool.from_files([tmp_path / "short.json"])


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _write_shard(path: Path, clips: list[tuple[str, str, PoseSequence]]) -> None:
    with tarfile.open(path, "w") as tar:
        for video_id, split, pose in clips:
            key = f"{video_id}-c00000"
            height, width = pose.frame_size
            meta = ClipMeta(
                video_id=video_id,
                clip_index=0,
                frame_indices=list(range(pose.num_frames)),
                fps=8.0,
                source_fps=30.0,
                height=height,
                width=width,
                ref_frames=[0],
                pose_source="synthetic",
                split=split,
            )
            _add(tar, f"{key}.meta.json", json.dumps(asdict(meta)).encode())
            _add(tar, f"{key}.ref0.jpg", b"not decoded")
            _add(tar, f"{key}.clip.pyd", b"\x80\x04 never unpickled")
            buffer = io.BytesIO()
            np.save(buffer, pose.to_array(), allow_pickle=False)
            _add(tar, f"{key}.pose.npy", buffer.getvalue())


def test_cli_builds_a_pool_from_shards(tmp_path, capsys):
    clips = [(f"vid{i}", "val" if i == 2 else "train", demo_pose_sequence(4, seed=i, body_scale=0.7)) for i in range(5)]
    _write_shard(tmp_path / "shard-000000.tar", clips[:3])
    _write_shard(tmp_path / "shard-000001.tar", clips[3:])
    keys = [key for key, _ in iter_shard_poses([tmp_path / "shard-000000.tar"], split=None)]
    assert keys == ["vid0-c00000", "vid1-c00000", "vid2-c00000"]
    anchors = tmp_path / "anthro.json"
    anchors.write_text(json.dumps(demo_pose_sequence(1, seed=7).body[0].tolist()))
    code = anchor_pool_main(
        [
            "--shards",
            str(tmp_path),
            "--output",
            str(tmp_path / "out" / "pool.npy"),
            "--num_anchors",
            "10",
            "--seed",
            "3",
            "--add",
            str(anchors),
        ]
    )
    assert code == 0, capsys.readouterr().err
    pool = AnchorPool.load(tmp_path / "out" / "pool.npy")
    sources = sorted(p.split("#")[0] for p in pool.provenance[:-1])
    assert sources == ["vid0-c00000", "vid1-c00000", "vid3-c00000", "vid4-c00000"]  # the val clip is skipped
    assert pool.provenance[-1].endswith("anthro.json#0")
    assert "wrote 5 anchors" in capsys.readouterr().out


def test_cli_reports_bad_input(tmp_path, capsys):
    assert anchor_pool_main(["--shards", str(tmp_path / "nothing-*.tar"), "--output", str(tmp_path / "p.npy")]) == 1
    assert "matches no .tar file" in capsys.readouterr().err
    bad = demo_pose_sequence(2, seed=0)
    body = bad.body.copy()
    body[1, 3] = (1.7, 0.2)
    _write_shard(tmp_path / "bad.tar", [("vidbad", "train", PoseSequence(body, bad.feet, bad.hands, None, (768, 512)))])
    assert anchor_pool_main(["--shards", str(tmp_path / "bad.tar"), "--output", str(tmp_path / "p.npy")]) == 1
    err = capsys.readouterr().err
    assert "bad.tar" in err and "vidbad-c00000" in err and "outside [0, 1]" in err
