"""Frame planning (stride, target fps, start, short clips, timestamps) and the settings' checks."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from animatex_train.inference.frames import plan_frames
from animatex_train.inference.settings import (
    AnimateSettings,
    InputSettings,
    SamplingSettings,
    WeightsSettings,
    settings_from_dict,
)
from animatex_train.preprocess.video import VideoInfo


def _info(num_frames: int, fps: float = 24.0, times: np.ndarray | None = None) -> VideoInfo:
    if times is None:
        times = np.arange(num_frames) / fps
    return VideoInfo(
        num_frames=num_frames,
        fps=Fraction(str(fps)),
        height=64,
        width=48,
        frame_times=times,
        pts=tuple(range(num_frames)),
        variable_frame_rate=False,
        codec="test",
    )


def test_stride_start_and_output_rate():
    plan = plan_frames(_info(100), stride=2, start=1.0, frames=10)
    assert plan.indices.tolist() == list(range(24, 44, 2))
    assert plan.fps == 12 and plan.duration == pytest.approx(10 / 12) and not plan.warnings
    assert plan.start_time == pytest.approx(1.0) and plan.end_time == pytest.approx(1.0 + 20 / 24)
    assert plan_frames(_info(100), target_fps=8, frames=4).stride == 3
    assert plan_frames(_info(100), stride=2, frames=4, fps=30).fps == 30
    everything = plan_frames(_info(100), stride=3, frames=None)
    assert everything.num_frames == 34 and everything.indices[-1] == 99


def test_short_clip_lowers_the_stride_then_holds_the_last_pose():
    lowered = plan_frames(_info(40), stride=2, frames=32)  # needs 63 frames at stride 2 (issue #24 crashes)
    assert lowered.stride == 1 and lowered.requested_stride == 2 and lowered.held == 0
    assert lowered.indices.tolist() == list(range(32)) and "using stride 1" in lowered.warnings[0]
    held = plan_frames(_info(10), stride=1, frames=32)
    assert held.num_frames == 32 and held.held == 22
    assert held.indices.tolist() == list(range(10)) + [9] * 22
    assert "last pose is held" in held.warnings[-1]
    assert held.duration == pytest.approx(32 / 24)
    one = plan_frames(_info(1), frames=3)
    assert one.indices.tolist() == [0, 0, 0]


def test_variable_frame_rate_is_sampled_by_timestamp():
    times = np.array([0.0, 0.03, 0.09, 0.10, 0.16, 0.2, 0.26, 0.3])  # nominal 0.05 s steps, uneven
    info = _info(len(times), fps=20.0, times=times)
    plan = plan_frames(info, stride=1, frames=6)
    # target times 0, .05, .10, .15, .20, .25 -> the frame on screen at each
    assert plan.indices.tolist() == [0, 1, 3, 3, 5, 5]


def test_start_beyond_the_video_names_the_flag():
    with pytest.raises(ValueError, match="--start"):
        plan_frames(_info(24), start=5.0)


@pytest.mark.parametrize(
    ("build", "flag"),
    [
        (lambda: InputSettings(size=(700, 512)), "--size"),
        (lambda: InputSettings(stride=2, target_fps=8), "--stride/--target_fps"),
        (lambda: InputSettings(ref_fit="zoom"), "--ref_fit"),
        (lambda: InputSettings(align="magic"), "--align"),
        (lambda: SamplingSettings(window=8, overlap=8), "--overlap"),
        (lambda: SamplingSettings(noise_prior=1200), "--noise_prior"),
        (lambda: WeightsSettings(checkpoint=None), "--checkpoint"),
        (lambda: WeightsSettings(tiny=True, dwpose_det="a.onnx"), "--dwpose_det/--dwpose_pose"),
    ],
)
def test_errors_name_the_flag(build, flag):
    with pytest.raises(ValueError, match=flag.replace("/", "/")):
        build()


def test_official_mode_resolves_to_the_released_values():
    settings = AnimateSettings(
        mode="official",
        weights=WeightsSettings(tiny=True),
        inputs=InputSettings(size=(512, 768), ref_fit="crop", align="unianimate"),
        sampling=SamplingSettings(window=16, cfg_batch="on", noise_prior=939),
    )
    resolved = settings.resolved()
    assert resolved.inputs.size == (768, 512) and resolved.inputs.ref_fit == "stretch"
    assert resolved.inputs.align == "none" and resolved.inputs.ref_keypoints == "driving0"
    assert resolved.sampling.window is None and resolved.sampling.cfg_batch == "off"
    assert resolved.sampling.noise_prior is None and resolved.output.fps == 8.0
    assert resolved.sampling.sampler.guidance_scale == 2.5 and resolved.sampling.sampler.num_steps == 30
    assert settings.inputs.size == (512, 768)  # the original is untouched


def test_overrides_and_round_trip():
    settings = AnimateSettings(weights=WeightsSettings(tiny=True))
    changed = settings.with_overrides({"inputs.frames": 16, "sampling.sampler.guidance_scale": 1.0})
    assert changed.inputs.frames == 16 and changed.sampling.sampler.guidance_scale == 1.0
    assert settings_from_dict(changed.to_dict()) == changed
    with pytest.raises(ValueError, match="unknown setting 'inputs.nope'"):
        settings.with_overrides({"inputs.nope": 1})
    with pytest.raises(ValueError, match="--frames"):
        settings.with_overrides({"inputs.frames": 0})
