"""End to end on real videos: DWPose (tiny ONNX, real onnxruntime path), tiny VAE and CLIP -> shards -> decode."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import webdataset as wds

from animatex_train.data.format.keypoints import PoseSequence
from animatex_train.data.format.manifest import DatasetManifest, ManifestError
from animatex_train.data.format.schema import decode_clip
from animatex_train.preprocess.encode import ClipEncoder, jpeg_bytes
from animatex_train.preprocess.pose.dwpose import DWPoseEstimator
from animatex_train.preprocess.prepare import prepare_dataset
from animatex_train.preprocess.sampling import CropGeometry


def _decode_by_counting(path: Path, indices: list[int]) -> np.ndarray:
    """Independent check of frame numbering: decode from the start and count frames (as cv2 does)."""
    wanted, frames = set(indices), {}
    with av.open(str(path)) as container:
        for count, frame in enumerate(container.decode(video=0)):
            if count in wanted:
                frames[count] = frame.to_ndarray(format="rgb24")
            if count >= max(indices):
                break
    return np.stack([frames[i] for i in indices])


def _read_records(output_dir: Path) -> dict:
    manifest = DatasetManifest.load(output_dir)
    records = {}
    for path in manifest.shard_paths():
        for raw in wds.WebDataset(str(path), shardshuffle=False):
            record = decode_clip(raw)
            assert record.key not in records
            records[record.key] = record
    return records


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_dwpose, prep):
    """One run over both sample videos, with frames.mp4."""
    out = tmp_path_factory.mktemp("prepared")
    config = prep.make_config(prep.VIDEOS, out, tiny_dwpose)
    config.shards.write_frames_mp4 = True
    manifest = prepare_dataset(config)
    return config, manifest, out


def test_manifest_lists_every_clip(prepared):
    _, manifest, out = prepared
    # dance1_right: 32 frames at 8 fps -> 4 clips of 8; dance_3: 153 frames at 24 fps -> 51 at 8 fps -> 6 clips.
    assert manifest.num_samples == 10
    assert [v.video for v in manifest.videos] == ["dance1_right.mp4", "dance_3.mp4"]
    assert [v.num_clips for v in manifest.videos] == [4, 6]
    assert len(manifest.shards) == 2  # a shard closes at each video boundary past the tiny target
    assert sum(s.num_frames for s in manifest.shards) == 80
    assert manifest.encoders["pose"].startswith("dwpose")
    assert (out / "rejects.jsonl").read_text() == ""
    assert DatasetManifest.load(out / "manifest.json") == manifest
    manifest.verify_shards()
    assert not list(out.glob("*.tmp")) and not list(out.glob(".staging*"))


def test_shards_hold_exactly_what_the_pipeline_computes(prepared, tiny_dwpose, prep):
    """Recompute every clip independently from the source video and compare bitwise."""
    config, _, out = prepared
    records = _read_records(out)
    encoder = ClipEncoder(config.encoders)
    estimator = DWPoseEstimator(*tiny_dwpose)
    for video, fps_ratio in ((prep.DANCE_SHORT, 1), (prep.DANCE_LONG, 3)):
        keys = sorted(k for k in records if k.startswith(video.stem + "-c"))
        for clip_index, key in enumerate(keys):
            record = records[key]
            meta = record.meta
            expected_indices = [(clip_index * 8 + k) * fps_ratio for k in range(8)]
            assert meta.frame_indices == expected_indices
            assert (meta.height, meta.width) == (64, 48) and meta.fps == 8.0
            source = _decode_by_counting(video, meta.frame_indices)
            geometry = CropGeometry.fit(source.shape[1:3], (64, 48))
            frames = np.stack([geometry.apply(f) for f in source])
            mean, std, embeds = encoder.encode(frames)
            assert record.latent_mean.dtype == np.float16 and record.clip_embeds.dtype == np.float16
            np.testing.assert_array_equal(record.latent_mean, mean)
            np.testing.assert_array_equal(record.latent_std, std)
            np.testing.assert_array_equal(record.clip_embeds, embeds)
            source_pose = estimator.estimate(source).to_array()
            expected_pose = PoseSequence.from_array(geometry.transform_points(source_pose), (64, 48)).to_array()
            np.testing.assert_array_equal(record.pose.to_array(), expected_pose)
            assert record.pose.body_visible.sum() > 0
            assert len(meta.ref_frames) == 3 and meta.ref_frames == sorted(set(meta.ref_frames))
            for jpeg, ref in zip(record.ref_jpegs, meta.ref_frames, strict=True):
                assert jpeg == jpeg_bytes(frames[ref], config.shards.jpeg_quality)
            with av.open(io.BytesIO(record.frames_mp4)) as container:
                decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
            assert decoded.shape == frames.shape
            assert np.abs(decoded.astype(int) - frames.astype(int)).mean() < 8  # H.264 at CRF 18 on 64 x 48


def test_rerun_is_byte_identical_and_skips_everything(prepared, tiny_dwpose, tmp_path, prep):
    config, manifest, out = prepared
    copy = tmp_path / "again"
    config_again = prep.make_config(prep.VIDEOS, copy, tiny_dwpose, shards=config.shards)
    assert prepare_dataset(config_again) == manifest
    assert prep.shard_bytes(copy) == prep.shard_bytes(out)
    assert (copy / "manifest.json").read_bytes() == (out / "manifest.json").read_bytes()
    before = prep.shard_bytes(out)
    again = prepare_dataset(
        prep.make_config(prep.VIDEOS, out, tiny_dwpose, shards=config.shards)
    )  # resume of a finished run
    assert again == manifest and prep.shard_bytes(out) == before
    summary = [json.loads(line) for line in (out / "journal-r000.jsonl").read_text().splitlines()][-1]["summary"]
    assert summary["skipped"] == 2 and summary["processed"] == 0


def test_changed_settings_refuse_to_resume(prepared, tiny_dwpose, prep):
    from animatex_train.preprocess.journal import JournalError

    config, _, out = prepared
    changed = prep.make_config(prep.VIDEOS, out, tiny_dwpose, shards=config.shards)
    changed.clips.num_refs = 2
    with pytest.raises(JournalError, match="clips"):
        prepare_dataset(changed)


def test_altered_shard_fails_verification(prepared, tmp_path):
    _, manifest, out = prepared
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    victim = copy / manifest.shards[0].path
    data = bytearray(victim.read_bytes())
    data[600] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="sha256"):
        DatasetManifest.load(copy).verify_shards()


def _faststart_copy(source: Path, target: Path) -> None:
    """Remux with the index (moov) first, so a cut file still opens and only its tail is missing."""
    with av.open(str(source)) as src, av.open(str(target), "w", format="mp4", options={"movflags": "faststart"}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)


def test_bad_inputs_are_rejected_and_the_rest_succeeds(tmp_path, tiny_dwpose, prep):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(prep.DANCE_SHORT, inputs / "good.mp4")
    # Cut in the middle: its index (moov) sits at the end of the file, so FFmpeg cannot open it at all.
    (inputs / "cut.mp4").write_bytes(prep.DANCE_SHORT.read_bytes()[:200_000])
    _faststart_copy(prep.DANCE_SHORT, tmp_path / "fast.mp4")
    (inputs / "cut_fast.mp4").write_bytes((tmp_path / "fast.mp4").read_bytes()[:300_000])
    (inputs / "notes.mp4").write_text("this is not a video\n")
    (inputs / "empty.mkv").write_bytes(b"")
    still = np.full((16, 64, 48, 3), 128, np.uint8)
    cv2.imwrite(str(inputs / "frame.jpg"), still[0])
    listing = tmp_path / "videos.txt"
    listing.write_text(
        "in/good.mp4\nin/cut.mp4\nin/cut_fast.mp4\nin/notes.mp4\nin/empty.mkv\nin/frame.jpg\nin/missing.mp4\n"
    )
    manifest = prepare_dataset(prep.make_config(listing, tmp_path / "out", tiny_dwpose))
    assert [v.video for v in manifest.videos] == ["in/good.mp4"]
    assert manifest.num_samples == 4
    rejected = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    reasons = {r["video"]: r["reason"] for r in rejected}
    assert reasons == {
        "in/cut.mp4": "truncated",
        "in/cut_fast.mp4": "truncated",
        "in/notes.mp4": "unreadable",
        "in/empty.mkv": "unreadable",
        "in/frame.jpg": "not_video",
        "in/missing.mp4": "missing",
    }
    assert all(r["detail"] for r in rejected)
    assert manifest.num_rejects == 6


def test_aspect_buckets_get_their_own_shards(tmp_path, prep):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(prep.DANCE_SHORT, inputs / "portrait.mp4")  # 768 x 1216 (W x H)
    with av.open(str(inputs / "landscape.mp4"), "w") as container:  # 96 x 64, 16 frames at 8 fps
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for i in range(16):
            frame = av.VideoFrame.from_ndarray(np.full((64, 96, 3), 8 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    for name, frames in (("portrait", 32), ("landscape", 16)):
        points = np.full((frames, 130, 2), -1.0, dtype=np.float32)
        points[:, :18] = np.linspace(0.3, 0.7, 18)[:, None]  # a person on the diagonal, inside any center crop
        np.save(inputs / f"{name}.pose.npy", points)
    config = prep.make_config(inputs, tmp_path / "out", None)
    config.clips.resolutions_px = [(64, 48), (48, 64)]
    config.shards.target_size_mb = 100.0  # big: only the bucket separates the shards
    manifest = prepare_dataset(config)
    assert [(s.path, s.resolutions) for s in manifest.shards] == [
        ("shard-train-48x64-r000-000000.tar", {"48x64": 2}),
        ("shard-train-64x48-r000-000000.tar", {"64x48": 4}),
    ]
    for path in manifest.shard_paths():
        for raw in wds.WebDataset(str(path), shardshuffle=False):
            record = decode_clip(raw)
            assert f"{record.meta.height}x{record.meta.width}" in path.name
            assert record.latent_mean.shape[2:] == (record.meta.height // 8, record.meta.width // 8)
