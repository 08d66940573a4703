"""Frame indexing, frame-rate resampling, clip cutting, crop geometry, input listing and the rank split."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from animatex_train.preprocess.inputs import (
    InputError,
    discover_videos,
    list_inputs,
    load_metadata,
    rank_share,
    resolve_rank,
    video_ids,
)
from animatex_train.preprocess.rejects import VideoRejected
from animatex_train.preprocess.sampling import (
    CropGeometry,
    choose_resolution,
    clip_starts,
    plan_video,
    source_indices,
)
from animatex_train.preprocess.video import decode_frames, probe_video


def _write_video(path: Path, times_ms: list[int], size: tuple[int, int] = (48, 64)) -> Path:
    """An H.264 mp4 whose frame i is uniformly grey level 10 * i, shown at times_ms[i]."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = size[1], size[0], "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate(times_ms):
            frame = av.VideoFrame.from_ndarray(np.full((*size, 3), 10 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_frame_index_is_presentation_order_with_b_frames(tmp_path):
    path = _write_video(tmp_path / "cfr.mp4", [40 * i for i in range(12)])
    info = probe_video(path)
    assert (info.num_frames, info.fps, info.variable_frame_rate) == (12, 25, False)
    decoded = dict(decode_frames(path, info, np.array([0, 3, 7, 11])))
    assert sorted(decoded) == [0, 3, 7, 11]
    for index, frame in decoded.items():
        assert abs(float(frame.mean()) - 10 * index) < 3  # the grey level identifies the frame


def test_variable_frame_rate_is_rejected_or_sampled_by_timestamp(tmp_path):
    path = _write_video(tmp_path / "vfr.mp4", [0, 40, 80, 160, 200, 280, 320, 360, 400, 480])
    info = probe_video(path)
    assert info.variable_frame_rate
    with pytest.raises(VideoRejected, match="variable_frame_rate"):
        source_indices(info, 25.0, "reject")
    # 25 fps output: time k * 40 ms shows the last frame at or before it.
    assert source_indices(info, 25.0, "timestamps").tolist() == [0, 1, 2, 2, 3, 4, 4, 5, 6, 7, 8, 8, 9]


def test_constant_rate_resampling_is_exact(prep):
    info = probe_video(prep.DANCE_LONG)  # 153 frames at 24 fps
    assert source_indices(info, 8.0, "reject").tolist() == list(range(0, 153, 3))
    assert source_indices(info, None, "reject").tolist() == list(range(153))
    twelve = source_indices(info, 10.0, "reject")  # 2.4 source frames per output frame
    assert twelve[:6].tolist() == [0, 2, 4, 7, 9, 12] and twelve[-1] <= 152
    with pytest.raises(VideoRejected, match="fps_too_low"):
        source_indices(info, 30.0, "reject")
    ntsc = probe_video(prep.DANCE_SHORT)
    assert ntsc.fps == 8


def test_clip_starts_and_plan():
    assert clip_starts(51, 8, 8, None) == [0, 8, 16, 24, 32, 40]
    assert clip_starts(51, 8, 4, None)[-1] == 40
    assert clip_starts(51, 8, 8, 3) == [0, 16, 40]  # evenly spread (windows 0, 2.5 -> 2, 5), first and last kept
    with pytest.raises(VideoRejected, match="too_short"):
        clip_starts(7, 8, 8, None)


def test_plan_uses_window_numbers_as_clip_indices(prep):
    plan = plan_video(
        probe_video(prep.DANCE_LONG),
        num_frames=8,
        stride=8,
        fps=8.0,
        vfr_policy="reject",
        max_clips=3,
        resolutions=[(64, 48), (48, 64)],
    )
    assert plan.clip_indices == [0, 2, 5] and plan.resolution == (64, 48)  # portrait video -> portrait bucket
    assert plan.clips[1].tolist() == list(range(48, 72, 3))


def test_choose_resolution_by_aspect():
    buckets = [(768, 512), (512, 768), (640, 640)]
    assert choose_resolution((1920, 1080), buckets) == (768, 512)
    assert choose_resolution((1080, 1920), buckets) == (512, 768)
    assert choose_resolution((500, 520), buckets) == (640, 640)


@pytest.mark.parametrize("source", [(758, 512), (512, 758), (100, 100), (30, 20)])
def test_crop_geometry_moves_frames_and_keypoints_together(source):
    target = (64, 48)
    geometry = CropGeometry.fit(source, target)
    frame = np.zeros((*source, 3), dtype=np.uint8)
    radius = max(2, min(source) // 20)  # a square blob that survives the downscale
    x, y = int(source[1] * 0.45), int(source[0] * 0.55)
    frame[y - radius : y + radius, x - radius : x + radius] = 255  # centred on pixel corner (x, y)
    out = geometry.apply(frame)[..., 0].astype(np.float64)
    assert out.shape == target
    ys, xs = np.mgrid[: target[0], : target[1]] + 0.5  # pixel centres, continuous coordinates
    centroid = ((xs * out).sum() / out.sum(), (ys * out).sum() / out.sum())
    point = geometry.transform_points(np.array([[x / source[1], y / source[0]]]))[0]
    assert abs(point[0] * target[1] - centroid[0]) < 0.5
    assert abs(point[1] * target[0] - centroid[1]) < 0.5
    corner, missing = geometry.transform_points(np.array([[0.0, 0.0], [-1.0, -1.0]]))
    assert (missing == -1).all()
    if geometry.offset != (0, 0):  # the source's top-left corner was cropped away
        assert (corner == -1).all()


def test_listing_folder_glob_and_list(tmp_path, prep):
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    for rel in ("a/x.mp4", "b/x.mp4", "b/y.MOV", "b/z.webm", "b/notes.txt"):
        (root / rel).write_bytes(b"")
    found, bad = list_inputs(str(root))
    assert [rel for _, rel in found] == ["a/x.mp4", "b/x.mp4", "b/y.MOV", "b/z.webm"] and bad == []
    found, _ = list_inputs(str(root / "**" / "*.mp4"))
    assert [rel for _, rel in found] == ["a/x.mp4", "b/x.mp4"]
    listing = root / "list.txt"
    listing.write_text("# comment\nb/z.webm\n\na/x.mp4\nb/notes.txt\nnope.mp4\n")
    found, bad = list_inputs(str(listing))
    assert [rel for _, rel in found] == ["a/x.mp4", "b/z.webm"]
    assert [(r.video, r.reason) for r in bad] == [("b/notes.txt", "not_video"), ("nope.mp4", "missing")]
    with pytest.raises(InputError, match="no such folder"):
        list_inputs(str(tmp_path / "absent"))
    ids = video_ids(["a/x.mp4", "b/x.mp4", "b/y.MOV", "c/we ird.name.mp4"])
    assert ids[2:] == ["y", "we_ird_name"] and len(set(ids)) == 4 and ids[0].startswith("x-")


def test_metadata_csv_and_jsonl(tmp_path, prep):
    csv = tmp_path / "meta.csv"
    csv.write_text("video,split,source,licence\ndance1_right.mp4,val,animate-x,Apache-2.0\n")
    videos, _ = discover_videos(str(prep.VIDEOS), str(csv))
    by_name = {v.rel_path: v for v in videos}
    assert by_name["dance1_right.mp4"].split == "val" and by_name["dance1_right.mp4"].licence == "Apache-2.0"
    assert by_name["dance_3.mp4"].split == "train"
    jsonl = tmp_path / "meta.jsonl"
    jsonl.write_text('{"video": "dance_3.mp4", "split": "holdout"}\n')
    with pytest.raises(InputError, match="split 'holdout'"):
        load_metadata(str(jsonl))
    jsonl.write_text('{"video": "dance_3.mp4", "colour": "red"}\n')
    with pytest.raises(InputError, match="unknown column"):
        load_metadata(str(jsonl))
    jsonl.write_text('{"video": "other.mp4"}\n')
    with pytest.raises(InputError, match="match no input video"):
        discover_videos(str(prep.VIDEOS), str(jsonl))


def test_rank_resolution_and_split():
    assert resolve_rank(None, None, {}) == (0, 1)
    assert resolve_rank(None, None, {"RANK": "3", "WORLD_SIZE": "4"}) == (3, 4)
    slurm = {
        "SLURM_ARRAY_TASK_ID": "7",
        "SLURM_ARRAY_TASK_COUNT": "4",
        "SLURM_ARRAY_TASK_MIN": "5",
        "SLURM_ARRAY_TASK_MAX": "8",
    }
    assert resolve_rank(None, None, slurm) == (2, 4)
    with pytest.raises(InputError, match="strided"):
        resolve_rank(None, None, slurm | {"SLURM_ARRAY_TASK_MAX": "11"})
    assert resolve_rank(1, 2, {"RANK": "0", "WORLD_SIZE": "8"}) == (1, 2)  # explicit flags win
    with pytest.raises(InputError):
        resolve_rank(2, 2, {})
    items = list(range(11))
    shares = [rank_share(items, r, 3) for r in range(3)]
    assert sorted(sum(shares, [])) == items and all(not set(a) & set(b) for a in shares for b in shares if a is not b)


def test_rotation_metadata_is_rejected(tmp_path):
    path = _write_video(tmp_path / "upright.mp4", [40 * i for i in range(4)])
    rotated = tmp_path / "rotated.mp4"
    with av.open(str(path)) as src, av.open(str(rotated), "w") as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        stream.set_display_rotation(90)
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    info = probe_video(rotated)
    with pytest.raises(VideoRejected, match="rotated"):
        list(decode_frames(rotated, info, np.arange(4)))
