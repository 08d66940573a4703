"""``animate()`` end to end on CPU: tiny random-weight networks, tiny DWPose ONNX files, the real sample media.

Each run writes an mp4 whose frame count and duration match the request, and a meta.json."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch

from animatex_train.inference.frames import plan_frames
from animatex_train.inference.media import open_driving
from animatex_train.inference.outputs import meta_path
from animatex_train.inference.pipeline import animate
from animatex_train.inference.prepare import prepare_clip


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the 2 cores are shared with other test processes
    yield
    torch.set_num_threads(threads)


def _probe(path) -> tuple[int, float, list[str]]:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video))
        return frames, float(container.duration / 1e6), [s.type for s in container.streams]


def test_one_second_clip_with_audio(inf, fast_settings, models, tmp_path):
    settings = inf.with_changes(fast_settings, inputs={"frames": None, "stride": 2})
    out = tmp_path / "one_second.mp4"
    result = animate(
        inf.MEDIA / "portrait.jpg", inf.MEDIA / "dance_1s.mp4", settings, models=models, output=out, seed=7
    )
    assert result.frames.shape == (12, 64, 64, 3) and float(result.fps) == 12.0
    frames, duration, streams = _probe(out)
    assert frames == 12 and duration == pytest.approx(1.0, abs=0.05) and streams == ["video", "audio"]
    meta = json.loads(meta_path(out).read_text())
    assert meta["status"] == "ok" and meta["seed"] == 7 and meta["frames"]["count"] == 12
    assert meta["frames"]["duration_s"] == pytest.approx(1.0)
    assert meta["checkpoint"]["kind"] == "export" and len(meta["checkpoint"]["sha256"]) == 64
    assert meta["sampling"]["timesteps"] == [501, 1] and meta["sampling"]["network_calls"] == 4
    assert meta["settings"]["inputs"]["stride"] == 2 and meta["outputs"]["audio"] is True
    assert set(meta["timings_s"]) >= {"prepare", "sampling", "decode", "write"} and meta["peak_memory"]
    assert meta["conditioning"]["reference_keypoints"] == "dwpose"


def test_short_clip_holds_the_last_pose(inf, fast_settings, models, tmp_path):
    settings = inf.with_changes(fast_settings, inputs={"frames": 12})
    out = tmp_path / "short.mp4"
    result = animate(inf.MEDIA / "portrait.jpg", inf.MEDIA / "dance_10f.mp4", settings, models=models, output=out)
    assert result.plan.held == 2 and result.plan.indices.tolist()[-3:] == [9, 9, 9]
    frames, duration, _ = _probe(out)
    assert frames == 12 and duration == pytest.approx(12 / 24, abs=0.03)
    assert any("last pose is held" in w for w in json.loads(meta_path(out).read_text())["warnings"])
    assert np.array_equal(result.clip.pose_frames[-1], result.clip.pose_frames[-3])


def test_rgba_landscape_canvas_and_layout(inf, fast_settings, models, tmp_path):
    settings = inf.with_changes(
        fast_settings,
        inputs={"size": (64, 128), "bg": (0, 255, 0), "frames": 3},
        output={"layout": "ref-pose-result-source", "save_poses": True, "save_frames": True},
    )
    out = tmp_path / "rgba.mp4"
    result = animate(inf.MEDIA / "rgba.png", inf.MEDIA / "dance_1s.mp4", settings, models=models, output=out)
    assert result.frames.shape == (3, 64, 128, 3)
    reference = result.clip.reference
    assert (reference[:, :8] == (0, 255, 0)).all()  # padded sides and the transparent area -> --bg
    with av.open(str(out)) as container:
        assert container.streams.video[0].width == 4 * 128  # reference | pose | result | source
    assert (tmp_path / "rgba.poses.mp4").is_file() and np.load(tmp_path / "rgba.keypoints.npy").shape == (4, 130, 2)
    assert len(list((tmp_path / "rgba.frames").glob("*.png"))) == 3


def test_reference_without_a_person_falls_back_with_a_warning(inf, fast_settings, models, tmp_path):
    settings = inf.with_changes(fast_settings, inputs={"frames": 2, "align": "none"})
    result = animate(inf.MEDIA / "empty.png", inf.MEDIA / "dance_1s.mp4", settings, models=models)
    assert any("no person on the reference" in w for w in result.meta["warnings"])
    assert result.meta["conditioning"]["reference_keypoints"] == "driving_frame_0"
    assert np.array_equal(result.clip.keypoints[0], result.clip.keypoints[1])  # IPI frame 0 = driving frame 0


def test_landscape_reference_gets_a_landscape_canvas(inf, fast_settings, models):
    settings = inf.with_changes(fast_settings, inputs={"size": None, "frames": 2}).resolved()
    driving = open_driving(inf.MEDIA / "dance_1s.mp4")
    plan = plan_frames(driving.info, frames=2)
    landscape = prepare_clip(inf.MEDIA / "landscape.jpg", driving, plan, settings, models)
    portrait = prepare_clip(inf.MEDIA / "exif_rotated.jpg", driving, plan, settings, models)
    assert landscape.canvas == (512, 768) and landscape.pose_frames.shape == (2, 512, 768, 3)
    assert portrait.canvas == (768, 512)  # EXIF orientation applied before choosing


def test_official_mode_conditioning(inf, fast_settings, models):
    """The released assembly (docs/inference.md); its sampler is checked against the official loop elsewhere."""
    settings = inf.with_changes(fast_settings, mode="official", inputs={"frames": 3, "stride": 2}).resolved()
    driving = open_driving(inf.MEDIA / "dance_1s.mp4")
    plan = plan_frames(driving.info, stride=2, frames=3, fps=settings.output.fps)
    clip = prepare_clip(inf.MEDIA / "rgba.png", driving, plan, settings, models)
    assert clip.canvas == (768, 512) and float(plan.fps) == 8.0 and plan.indices.tolist() == [0, 2, 4]
    assert clip.notes["reference_keypoints"] == "driving_frame_0"
    assert (clip.reference[0, 0] == (255, 0, 255)).all()  # alpha dropped, stretched
    assert torch.equal(clip.inputs.keypoints[0], clip.inputs.keypoints[1])
    # pose images come from the released drawing path (source resolution, JPEG, stretch): not the canvas drawing
    from animatex_train.inference.poses import pose_images

    drawn = pose_images(clip.keypoints[1:2], clip.canvas)[0]
    assert clip.pose_frames[0].shape == drawn.shape and not np.array_equal(clip.pose_frames[0], drawn)


def test_cfg_batch_guidance_one_and_bf16(inf, fast_settings, models):
    base = inf.with_changes(fast_settings, inputs={"frames": 2})
    two_passes = animate(inf.MEDIA / "portrait.jpg", inf.MEDIA / "dance_1s.mp4", base, models=models)
    batched = animate(
        inf.MEDIA / "portrait.jpg",
        inf.MEDIA / "dance_1s.mp4",
        inf.with_changes(base, sampling={"cfg_batch": "on"}),
        models=models,
    )
    assert batched.meta["sampling"]["cfg_batched"] and batched.meta["sampling"]["network_calls"] == 2
    torch.testing.assert_close(batched.latents, two_passes.latents, rtol=1e-4, atol=1e-4)
    sampler = {"sampler": type(base.sampling.sampler)(num_steps=2, guidance_scale=1.0)}
    unguided = animate(
        inf.MEDIA / "portrait.jpg", inf.MEDIA / "dance_1s.mp4", inf.with_changes(base, sampling=sampler), models=models
    )
    assert unguided.meta["sampling"]["network_calls"] == 2  # no unconditional pass
    assert not torch.allclose(unguided.latents, two_passes.latents)


def test_bf16_on_cpu(inf, fast_settings, models):
    from animatex_train.inference.pipeline import models_for

    settings = inf.with_changes(fast_settings, inputs={"frames": 2}, sampling={"precision": "bf16"})
    half = models_for(settings)
    assert next(half.net.parameters()).dtype == torch.bfloat16
    result = animate(inf.MEDIA / "portrait.jpg", inf.MEDIA / "dance_1s.mp4", settings, models=half)
    reference = animate(
        inf.MEDIA / "portrait.jpg",
        inf.MEDIA / "dance_1s.mp4",
        inf.with_changes(settings, sampling={"precision": None}),
        models=models,
    )
    assert result.meta["precision"] == "bf16" and result.latents.dtype == torch.float32
    assert torch.isfinite(result.latents).all()
    scale = float(reference.latents.abs().max())
    assert float((result.latents - reference.latents).abs().max()) < 0.1 * scale  # bf16 rounding, same function


def test_official_saved_layout_as_input(inf, fast_settings, models, tmp_path):
    """process_data.py's saved_frames/<v>/, saved_pose/<v>/ and saved_pkl/<v>.pkl drive the clip (no DWPose)."""
    import pickle

    from PIL import Image

    frames_dir, pose_dir = tmp_path / "saved_frames" / "v", tmp_path / "saved_pose" / "v"
    frames_dir.mkdir(parents=True)
    pose_dir.mkdir(parents=True)
    count, (h, w) = 5, (96, 64)
    rng = np.random.default_rng(0)
    bodies = rng.uniform(0.2, 0.8, size=(count, 18, 2)).astype(np.float32)
    bodies[:, 14:] = -1.0  # eyes and ears missing
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(frames_dir / f"frame_{i:04d}.jpg")
        Image.fromarray(np.full((h, w, 3), 10 * i, np.uint8)).save(pose_dir / f"frame_{i:04d}.jpg", quality=100)
    Image.fromarray(np.full((h, w, 3), 200, np.uint8)).save(pose_dir / "ref_pose.jpg", quality=100)
    pkl = tmp_path / "saved_pkl" / "v.pkl"
    pkl.parent.mkdir()
    pkl.write_bytes(
        pickle.dumps(
            {
                "bodies": bodies,
                "faces": -np.ones((count, 68, 2), np.float32),
                "hands": -np.ones((count, 2, 21, 2), np.float32),
                "size": (h, w, 3),
                "fps": 8,
            }
        )
    )
    settings = inf.with_changes(
        fast_settings,
        inputs={"frames": 3, "stride": 2, "pkl": str(pkl), "pose_dir": str(pose_dir), "ref_fit": "stretch"},
    )
    result = animate(inf.MEDIA / "portrait.jpg", frames_dir, settings, models=models)
    assert result.plan.indices.tolist() == [0, 2, 4] and float(result.fps) == 4.0
    assert [int(result.clip.pose_frames[k].mean().round()) for k in range(3)] == [0, 20, 40]  # the saved images
    assert int(result.clip.ref_pose.mean().round()) == 200  # ref_pose.jpg is pose frame 0
    ipi = result.clip.inputs.keypoints
    np.testing.assert_allclose(ipi[1:].numpy(), bodies[[0, 2, 4]].transpose(0, 2, 1), atol=1e-6)  # the pkl bodies


def test_hundred_frames_through_windows(inf, fast_settings, models, tmp_path):
    settings = inf.with_changes(
        fast_settings, inputs={"frames": 100}, sampling={"window": 32, "overlap": 8, "fusion": "triangular"}
    )
    out = tmp_path / "long.mp4"
    seen: list[int] = []
    original = models.net.forward

    def spy(latents, timesteps, conditions=None, dropout_generator=None):
        seen.append(latents.shape[2])
        if conditions is not None:  # each window's IPI inputs are its own frames plus the reference
            assert conditions.pose_keypoints.shape[1] == latents.shape[2] + 1
            assert conditions.driving_clip.abs().sum() > 0
        return original(latents, timesteps, conditions, dropout_generator)

    models.net.forward = spy
    try:
        result = animate(inf.MEDIA / "portrait.jpg", inf.MEDIA / "dance_100f.mp4", settings, models=models, output=out)
    finally:
        del models.net.forward
    assert result.meta["sampling"]["windows"] == [list(range(s, s + 32)) for s in (0, 24, 48, 68)]
    assert seen == [32] * (4 * 2 * 2)  # 4 windows x (cond + uncond) x 2 steps
    frames, duration, _ = _probe(out)
    assert frames == 100 and duration == pytest.approx(100 / 24, abs=0.05)
    assert models.net.ipi.keypoint_encoder.pos_embed.pos_table.shape[1] >= 101


@pytest.mark.parametrize("fusion", ["uniform", "triangular"])
def test_a_clip_within_one_window_is_the_single_pass_bitwise(inf, fast_settings, models, fusion):
    base = inf.with_changes(fast_settings, inputs={"frames": 6})
    single = animate(inf.MEDIA / "portrait.jpg", inf.MEDIA / "dance_1s.mp4", base, models=models)
    windowed = animate(
        inf.MEDIA / "portrait.jpg",
        inf.MEDIA / "dance_1s.mp4",
        inf.with_changes(base, sampling={"window": 8, "overlap": 2, "fusion": fusion}),
        models=models,
    )
    assert windowed.meta["sampling"]["windows"] == [list(range(6))]
    assert torch.equal(windowed.latents, single.latents) and np.array_equal(windowed.frames, single.frames)


def test_alignment_reaches_pose_images_and_ipi(inf, fast_settings, models, tmp_path):
    base = inf.with_changes(fast_settings, inputs={"frames": 2})
    plain = animate(inf.MEDIA / "portrait.jpg", inf.MEDIA / "dance_1s.mp4", base, models=models)
    preview = tmp_path / "align.png"
    aligned = animate(
        inf.MEDIA / "portrait.jpg",
        inf.MEDIA / "dance_1s.mp4",
        inf.with_changes(
            base,
            inputs={"frames": 2, "align": "unianimate", "pose_scale": (0.8, 0.8)},
            output={"align_preview": str(preview)},
        ),
        models=models,
    )
    report = aligned.meta["conditioning"]["alignment"]
    assert report["requested_mode"] == "unianimate" and tuple(report["manual_scale"]) == (0.8, 0.8)
    assert not np.array_equal(aligned.clip.keypoints[1:], plain.clip.keypoints[1:])
    assert np.array_equal(aligned.clip.keypoints[0], plain.clip.keypoints[0])  # the reference's own keypoints
    assert not np.array_equal(aligned.clip.pose_frames, plain.clip.pose_frames)  # the drawing follows
    ipi = aligned.clip.inputs.keypoints[1:].numpy()
    assert np.array_equal(ipi, aligned.clip.keypoints[1:, :18].transpose(0, 2, 1))  # and the IPI reads them
    assert preview.is_file()


def test_noise_prior_leaks_the_reference(inf, fast_settings, models):
    base = inf.with_changes(fast_settings, inputs={"frames": 2})
    plain = animate(inf.MEDIA / "portrait.jpg", inf.MEDIA / "dance_1s.mp4", base, models=models)
    prior = animate(
        inf.MEDIA / "portrait.jpg",
        inf.MEDIA / "dance_1s.mp4",
        inf.with_changes(base, sampling={"noise_prior": 939}),
        models=models,
    )
    assert prior.clip.inputs.ref_latent is not None and not torch.equal(prior.latents, plain.latents)
