"""Long-video windows: the schedule rule, per-window conditions, fusion and the noise prior."""

from __future__ import annotations

import pytest
import torch
from support.denoiser import randomize, tiny_inputs

from animatex_train.diffusion.gaussian import GaussianDiffusion
from animatex_train.inference.windows import (
    WindowedDenoiser,
    fusion_weights,
    noise_prior,
    slice_conditions,
    window_schedule,
)
from animatex_train.models.config import tiny_denoiser_config
from animatex_train.models.unet import AnimateXDenoiser, DenoiserConditions


def spans(windows: list[list[int]]) -> list[tuple[int, int]]:
    """Each window as [first, last + 1), after checking it is a run of consecutive frames."""
    for w in windows:
        assert w == list(range(w[0], w[-1] + 1)), w
    return [(w[0], w[-1] + 1) for w in windows]


@pytest.mark.parametrize(
    ("num_frames", "overlap", "expected"),
    [
        (96, 8, [(0, 32), (24, 56), (48, 80), (64, 96)]),  # UniAnimate's long mode (docs/inference.md)
        (100, 8, [(0, 32), (24, 56), (48, 80), (68, 100)]),  # starts 0, 24, 48, 72 (< 92); 72 snaps to 68
        (33, 8, [(0, 32), (1, 33)]),  # starts 0, 24 (< 25); 24 snaps to 1
        (33, 4, [(0, 32), (1, 33)]),  # starts 0, 28 (< 29)
        (56, 8, [(0, 32), (24, 56)]),  # the last window already ends at N: snapping changes nothing
        (20, 8, [(0, 20)]),  # N <= S: one pass, no wrapped duplicates (UniAnimate: 0..19, 0..11)
        (32, 8, [(0, 32)]),
        (1, 0, [(0, 1)]),
    ],
)
def test_snap_schedule_follows_the_unianimate_rule(num_frames, overlap, expected):
    windows = window_schedule(num_frames, 32, overlap)
    assert spans(windows) == expected
    assert sorted(set().union(*map(set, windows))) == list(range(num_frames))


def test_pad_schedule_tiles_and_holds_the_last_frame():
    assert window_schedule(100, 32, 8, tail="pad") == [
        list(range(0, 32)),
        list(range(24, 56)),
        list(range(48, 80)),
        list(range(72, 100)) + [99] * 4,
    ]
    assert window_schedule(6, 4, 1, tail="pad") == [[0, 1, 2, 3], [3, 4, 5, 5]]
    assert window_schedule(96, 32, 8, tail="pad")[-1] == list(range(72, 96)) + [95] * 8
    assert window_schedule(20, 32, 8, tail="pad") == [list(range(20))]


@pytest.mark.parametrize(
    ("args", "flag"),
    [((10, 0, 0), "--window"), ((10, 4, 4), "--overlap"), ((10, 4, -1), "--overlap"), ((0, 4, 1), "--frames")],
)
def test_schedule_errors_name_the_flag(args, flag):
    with pytest.raises(ValueError, match=flag):
        window_schedule(*args)


def test_fusion_weights():
    assert torch.equal(fusion_weights("uniform", 3), torch.ones(3))
    assert fusion_weights("triangular", 4).tolist() == [0.25, 0.75, 0.75, 0.25]
    tri = fusion_weights("triangular", 72, dtype=torch.float64)
    k = torch.arange(72, dtype=torch.float64)
    assert torch.allclose(tri, torch.minimum((k + 0.5) * 2 / 72, 2 - (k + 0.5) * 2 / 72), rtol=0, atol=1e-15)
    assert torch.allclose(tri, tri.flip(0), rtol=0, atol=1e-15) and tri[0] == 1 / 72
    with pytest.raises(ValueError, match="--fusion"):
        fusion_weights("gaussian", 4)


def coded_conditions(num_frames: int, b: int = 2) -> DenoiserConditions:
    """Conditions whose value at (sample s, frame f) is 100 s + f + 1 (frame 0 = the reference), never zero."""
    frame = torch.arange(num_frames + 1, dtype=torch.float32) + 1
    code = 100 * torch.arange(b, dtype=torch.float32).view(b, 1) + frame  # (b, f + 1)
    return DenoiserConditions(
        image_embedding=torch.full((b, 8), 7.0),
        local_image=code[:, None, 1:, None, None].expand(b, 3, num_frames, 4, 4).clone(),
        pose_images=code[:, None, :, None, None].expand(b, 3, num_frames + 1, 4, 4).clone(),
        ref_latent=torch.full((b, 4, 1, 2, 2), 3.0),
        pose_keypoints=code[:, :, None, None].expand(b, num_frames + 1, 2, 18).clone(),
        driving_clip=code[:, :, None].expand(b, num_frames + 1, 6).clone(),
        ipi_keep=torch.ones(b),
    )


def test_each_window_sees_its_own_sliced_ipi_inputs():
    num_frames, b = 10, 2
    cond = coded_conditions(num_frames, b)
    schedule = window_schedule(num_frames, 4, 1)
    seen = []

    def recording(x, t, c):
        seen.append(c)
        return x

    WindowedDenoiser(recording, schedule)(torch.zeros(b, 4, num_frames, 2, 2), torch.zeros(b, dtype=torch.long), cond)
    assert len(seen) == len(schedule) == 3
    sample = 100 * torch.arange(b, dtype=torch.float32)
    for window, c in zip(schedule, seen, strict=True):
        with_ref = torch.tensor([1.0] + [i + 2.0 for i in window])  # codes of [0] + [i + 1]
        expected = sample.view(b, 1) + with_ref  # (b, S + 1)
        assert torch.equal(c.pose_keypoints, expected[:, :, None, None].expand(b, len(window) + 1, 2, 18))
        assert torch.equal(c.driving_clip, expected[:, :, None].expand(b, len(window) + 1, 6))
        assert torch.equal(c.pose_images, expected[:, None, :, None, None].expand(b, 3, len(window) + 1, 4, 4))
        assert torch.equal(c.local_image, expected[:, None, 1:, None, None].expand(b, 3, len(window), 4, 4))
        assert c.image_embedding is cond.image_embedding and c.ref_latent is cond.ref_latent
        assert c.ipi_keep is cond.ipi_keep and c.local_image_keep is None and c.ref_latent_keep is None


def test_slicing_keeps_a_one_frame_local_image_and_none():
    cond = DenoiserConditions(local_image=torch.rand(1, 3, 1, 4, 4), pose_keypoints=torch.rand(1, 7, 2, 18))
    sliced = slice_conditions(cond, [2, 3])
    assert sliced.local_image is cond.local_image and sliced.pose_images is None and sliced.driving_clip is None
    assert torch.equal(sliced.pose_keypoints, cond.pose_keypoints[:, [0, 3, 4]])
    with pytest.raises(ValueError, match="pose_keypoints has 7 frames"):
        slice_conditions(cond, [5, 6])


def test_unconditional_branch_passes_none_to_every_window():
    seen = []
    fused = WindowedDenoiser(lambda x, t, c: seen.append(c) or x, window_schedule(6, 4, 2))
    fused(torch.rand(1, 4, 6, 2, 2), torch.zeros(1, dtype=torch.long), None)
    assert seen == [None, None]


def linear_fake(x: torch.Tensor, t: torch.Tensor, c: DenoiserConditions | None) -> torch.Tensor:
    """2 x plus the position inside the window: fusion errors (frame mapping, weights) change the output."""
    position = torch.arange(x.shape[2], dtype=x.dtype).view(1, 1, -1, 1, 1)
    return 2 * x + position


@pytest.mark.parametrize(
    ("schedule", "fusion", "offsets"),
    [
        # windows [0..3] [2..5]: frames 2, 3 are positions (2, 0) and (3, 1)
        (window_schedule(6, 4, 2), "uniform", [0, 1, 1, 2, 2, 3]),
        # triangular S = 4: w = 1/4, 3/4, 3/4, 1/4 -> frame 2: (3/4 * 2 + 1/4 * 0) / 1, frame 3: (1/4 * 3 + 3/4 * 1) / 1
        (window_schedule(6, 4, 2), "triangular", [0, 1, 1.5, 1.5, 2, 3]),
        # pad: [0..3] [3, 4, 5, 5]: frame 3 = positions (3, 0), frame 5 = positions 2 and 3 of window 2
        (window_schedule(6, 4, 1, tail="pad"), "uniform", [0, 1, 2, 1.5, 1, 2.5]),
        (window_schedule(6, 4, 1, tail="pad"), "triangular", [0, 1, 2, 1.5, 1, (0.75 * 2 + 0.25 * 3) / 1.0]),
    ],
)
def test_fused_output_of_a_linear_fake_is_exact(schedule, fusion, offsets):
    b, n = 2, 6
    x = torch.arange(n, dtype=torch.float32).view(1, 1, n, 1, 1).expand(b, 3, n, 2, 2) + torch.rand(b, 3, 1, 2, 2)
    out = WindowedDenoiser(linear_fake, schedule, fusion)(x, torch.zeros(b, dtype=torch.long), None)
    expected = 2 * x + torch.tensor(offsets, dtype=torch.float32).view(1, 1, n, 1, 1)
    assert torch.allclose(out, expected, rtol=0, atol=1e-6)


def test_window_batch_equals_one_window_at_a_time():
    schedule = window_schedule(10, 4, 1)
    x, t, cond = torch.rand(2, 4, 10, 2, 2), torch.tensor([5, 9]), coded_conditions(10)
    calls = []

    def fake(x, t, c):
        calls.append(x.shape[0])
        codes = c.pose_keypoints[:, 1:, 0, 0].view(x.shape[0], 1, -1, 1, 1)
        return linear_fake(x, t, c) * codes + t.view(-1, 1, 1, 1, 1)

    one = WindowedDenoiser(fake, schedule)(x, t, cond)
    two = WindowedDenoiser(fake, schedule, window_batch=2)(x, t, cond)
    assert calls == [2, 2, 2, 4, 2]  # three windows one by one, then a batch of two and the remainder
    assert torch.equal(one, two)


@pytest.fixture
def one_thread():
    """One intra-op thread: the tiny model's ops are too small to share, and on a loaded 2-core machine two threads
    spinning against other processes make a forward tens of times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model() -> AnimateXDenoiser:
    model = AnimateXDenoiser(tiny_denoiser_config()).eval()
    randomize(model, seed=3)  # the zero-initialised head (and every other layer) gets non-zero weights
    return model


def test_a_clip_within_one_window_is_the_single_pass_bitwise(one_thread):
    model = tiny_model()
    latents, t, cond = tiny_inputs(model.config, f=4)
    schedule = window_schedule(4, 8, 2)
    assert schedule == [[0, 1, 2, 3]]
    with torch.no_grad():
        direct = model(latents, t, cond)
        assert direct.abs().min() > 0
        for fusion in ("uniform", "triangular"):
            assert torch.equal(WindowedDenoiser(model, schedule, fusion)(latents, t, cond), direct)
        # the slicing path itself is exact: all frames in order give the same inputs
        assert torch.equal(model(latents[:, :, [0, 1, 2, 3]], t, slice_conditions(cond, [0, 1, 2, 3])), direct)


def test_real_denoiser_windows_match_per_window_calls(one_thread):
    model = tiny_model()
    latents, t, cond = tiny_inputs(model.config, f=6)
    schedule = window_schedule(6, 4, 2)
    with torch.no_grad():
        fused = WindowedDenoiser(model, schedule)(latents, t, cond)
        first = model(latents[:, :, 0:4], t, slice_conditions(cond, [0, 1, 2, 3]))
        second = model(latents[:, :, 2:6], t, slice_conditions(cond, [2, 3, 4, 5]))
        batched = WindowedDenoiser(model, schedule, window_batch=2)(latents, t, cond)
    assert torch.equal(fused[:, :, :2], first[:, :, :2]) and torch.equal(fused[:, :, 4:], second[:, :, 2:])
    assert torch.allclose(fused[:, :, 2:4], (first[:, :, 2:] + second[:, :, :2]) / 2, rtol=0, atol=1e-6)
    assert torch.allclose(batched, fused, rtol=1e-5, atol=1e-5)


def test_noise_prior_formula():
    alphas = GaussianDiffusion().alphas_cumprod
    g = torch.Generator().manual_seed(0)
    eps, ref = torch.randn(1, 4, 5, 3, 3, generator=g), torch.randn(1, 4, 1, 3, 3, generator=g)
    off = torch.randn(1, 4, 5, 1, 1, generator=g)
    a = alphas[939].double()
    assert abs(a.sqrt().item() - 0.030) < 5e-4  # UniAnimate's long mode (docs/inference.md)
    long = noise_prior(eps, ref, alphas, 939, off)
    expected = a.sqrt() * ref.double() + (1 - a).sqrt() * eps.double() + 0.1 * off.double()
    assert torch.allclose(long.double(), expected, rtol=0, atol=1e-6) and long.dtype == eps.dtype
    short = noise_prior(eps, ref, alphas, 949, off, variant="short")
    a = alphas[949].double()
    assert torch.allclose(short.double(), a.sqrt() * ref + (1 - a).sqrt() * (eps + 0.1 * off).double(), atol=1e-6)
    no_offset = noise_prior(eps, ref, alphas, 939, torch.zeros(1, 4, 5, 1, 1))
    assert torch.equal(noise_prior(eps, ref, alphas, 939), no_offset)
    with pytest.raises(ValueError, match="--noise_prior"):
        noise_prior(eps, ref, alphas, 1000)
