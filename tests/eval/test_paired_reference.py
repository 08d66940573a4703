"""PSNR*, legacy PSNR, SSIM and L1 against DisCo's own values on every frame pair of each reference fixture
(1e-6 relative per pair and aggregated), and the per-video / pooled aggregation."""

from __future__ import annotations

import numpy as np
import pytest
from metrics_reference import fixture_dirs, load_json, paired_cases, read_rgb

from animatex_train.eval.metrics.aggregate import PairedScores
from animatex_train.eval.metrics.paired import l1_disco, psnr_legacy_uint8, psnr_star, ssim_disco

FIXTURES = fixture_dirs()
pytestmark = pytest.mark.skipif(not FIXTURES, reason="no shared/reference/metrics_* fixture beside the checkout")
FUNCTIONS = {"PSNR_star": psnr_star, "PSNR_old_uint8": psnr_legacy_uint8, "SSIM": ssim_disco, "L1": l1_disco}
REL = 1e-6


def _close(got: float, want: float) -> bool:
    return abs(got - want) <= REL * abs(want) + 1e-15


@pytest.mark.parametrize("fixture", FIXTURES, ids=[d.name for d in FIXTURES])
def test_paired_metrics_match_disco_per_pair_and_aggregated(fixture):
    data = load_json(fixture)
    checked = 0
    for case in paired_cases(data):
        spec = data["paired_metrics"][case]
        scores = PairedScores()
        for pair in spec["per_pair"]:
            gen = read_rgb(fixture / spec["gen_dir"] / pair["file"])
            gt = read_rgb(fixture / spec["gt_dir"] / pair["file"])
            assert list(gen.shape) == pair["gen_shape_hwc"] and list(gt.shape) == pair["gt_shape_hwc"]
            values = {}
            for name, function in FUNCTIONS.items():
                values[name] = function(gen, gt)
                assert _close(values[name], pair[name]), (case, pair["file"], name, values[name], pair[name])
                checked += 1
            scores.add(pair["video"], values)
        aggregate = scores.pooled()
        for name in FUNCTIONS:
            want = spec["aggregate"][name]
            assert _close(aggregate[name], want), (case, name, aggregate[name], want)
        for video, means in spec.get("per_video_mean_derived", {}).items():
            ours = scores.per_video()[video]
            assert ours["n"] == means["n"]
            for name in FUNCTIONS:
                assert _close(ours[name], means[name]), (case, video, name)
    assert checked > 0


def test_legacy_psnr_overflows_like_uint8_numpy():
    """Differences that are multiples of 16 square to 0 mod 256: the legacy formula calls them identical."""
    gt = np.full((4, 4, 3), 100, np.uint8)
    gen = gt + np.uint8(16)
    assert psnr_legacy_uint8(gen, gt) == 100.0
    assert psnr_star(gen, gt) == pytest.approx(20 * np.log10(255 / 16))


def test_paired_metrics_reject_float_frames():
    frame = np.zeros((4, 4, 3), np.float32)
    with pytest.raises(ValueError, match="uint8"):
        psnr_star(frame, frame)
