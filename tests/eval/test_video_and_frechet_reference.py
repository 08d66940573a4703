"""FID-VID / FVD clip construction and preprocessing against DisCo's dataset class (windows exact, tensors to
1e-3), and the Fréchet distance against DisCo's ``fid_from_feats`` (1e-6 relative), on each reference fixture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from metrics_reference import fixture_dirs, load_json, read_rgb, tensors

from animatex_train.eval.metrics.frechet import FeatureStats, frechet_from_features, frechet_from_stats
from animatex_train.eval.metrics.video_clips import (
    disco_folder_windows,
    normalise_fid_vid,
    normalise_fvd,
    resize_bicubic_float,
    whole_clip_segments,
)

FIXTURES = fixture_dirs()
pytestmark = pytest.mark.skipif(not FIXTURES, reason="no shared/reference/metrics_* fixture beside the checkout")
IDS = [d.name for d in FIXTURES]
NORMALISE = {"fid_vid": normalise_fid_vid, "fvd": normalise_fvd}


@pytest.mark.parametrize("fixture", FIXTURES, ids=IDS)
def test_windows_and_preprocessed_clips_match_disco(fixture):
    data, stored = load_json(fixture), tensors(fixture)
    compared = 0
    for case, spec in data["video_preprocessing"].items():
        if not isinstance(spec, dict):
            continue
        for side in ("gen", "gt"):
            folder = fixture / spec[f"{side}_dir"]
            names = [p.name for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".gif", ".mp4")]
            for metric, expected in spec[side].items():
                windows, skipped = disco_folder_windows(names, expected["sample_duration"])
                assert windows == expected["windows"], (case, side, metric)
                assert skipped == expected["skipped_messages"]
                assert len(windows) == expected["n_samples"]
                for sample in expected["samples"]:
                    frames = np.stack(
                        [resize_bicubic_float(read_rgb(folder / n), expected["img_size"]) for n in sample["window"]]
                    )
                    ours = NORMALISE[metric](frames).unsqueeze(0)  # (1, 3, 16, S, S), DisCo's network input
                    assert list(ours.shape) == sample["network_input_shape"]
                    exact = torch.from_numpy(stored[sample["exact_frame0_tensor"]])
                    # PIL itself, as DisCo: bit-exact in practice; 1e-3 is the acceptance bound
                    assert (ours[0, :, 0] - exact).abs().max() <= 1e-3, (case, metric)
                    fp16 = torch.from_numpy(stored[sample["tensor"]]).float()
                    # the stored copy is float16: its own rounding (half an ulp at |x|) plus our 1e-3
                    ulp = torch.finfo(torch.float16).eps * fp16.abs().clamp_min(2**-14)
                    assert ((ours - fp16).abs() <= ulp / 2 + 1e-3).all(), (case, metric)
                    assert ours.double().sum().item() == pytest.approx(sample["sum_f64"], rel=1e-6)
                    assert ours.min().item() == pytest.approx(sample["min"], abs=1e-4)
                    assert ours.max().item() == pytest.approx(sample["max"], abs=1e-4)
                    compared += 1
    assert compared > 0 or all(
        not s[side][m]["samples"]
        for s in data["video_preprocessing"].values()
        if isinstance(s, dict)
        for side in ("gen", "gt")
        for m in s[side]
    )


@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
@pytest.mark.parametrize("fixture", FIXTURES, ids=IDS)
def test_frechet_matches_disco_from_matrices_and_from_streamed_statistics(fixture, method):
    data, stored = load_json(fixture), tensors(fixture)
    for name, case in data["frechet"]["cases"].items():
        first, second = stored[case["feats1"]], stored[case["feats2"]]
        want = case["disco_fid_from_feats"]
        tolerance = 1e-5 if case["case"].get("identical") else 1e-6 * abs(want)
        assert frechet_from_features(first, second, method) == pytest.approx(want, abs=tolerance), name
        # the same through FeatureStats fed in uneven batches, as the evaluation streams them
        stats = [FeatureStats(), FeatureStats()]
        for stat, rows in zip(stats, (first, second), strict=True):
            for chunk in np.array_split(rows, [1, 4, 11, 30]):
                stat.update(chunk)
            assert stat.count == len(rows)
            np.testing.assert_allclose(stat.covariance(), np.cov(rows, rowvar=False), rtol=1e-9, atol=1e-12)
        assert frechet_from_stats(*stats, method=method) == pytest.approx(want, abs=tolerance), name


def test_feature_stats_merge_equals_one_pass():
    rows = np.random.default_rng(0).normal(size=(50, 8)) * 3 + 100  # a large mean: a naive sum of squares drifts
    whole, left, right = FeatureStats(), FeatureStats(), FeatureStats()
    whole.update(rows)
    left.update(rows[:17])
    right.update(rows[17:])
    left.merge(right)
    np.testing.assert_allclose(left.mean, rows.mean(0), rtol=1e-12)
    np.testing.assert_allclose(left.covariance(), np.cov(rows, rowvar=False), rtol=1e-9)
    np.testing.assert_allclose(whole.covariance(), left.covariance(), rtol=1e-9)


def test_whole_clip_segments_repeat_the_last_frame():
    frames = [np.full((2, 2, 3), i, np.float32) for i in range(20)]
    segments = whole_clip_segments(frames, 16)
    assert segments.shape == (2, 16, 2, 2, 3)
    assert (segments[1, 4:] == 19).all() and segments[1, 3, 0, 0, 0] == 19 and segments[1, 0, 0, 0, 0] == 16
