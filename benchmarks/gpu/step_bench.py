"""The denoiser's training step, timed in isolation: matmul peak, step time per attention kernel, profile.

Measured with CUDA events after warm-up, median over the timed steps (METHOD.md of the device tool). The step
is what a DDP/1-GPU run does per micro-batch: bf16 autocast forward with fp32 weights, block activation
checkpointing, a v-prediction MSE, backward, AdamW. MFU counts model FLOPs only: 3 x the meta-device forward
count for the clip shape (the recompute is not counted), over the bf16 matmul rate measured on the same card.

Used by ``benchmarks/gpu/run.py``; also runnable alone, e.g. one configuration in its own process (the
compile measurement does that, so a slow compilation can be cut off by a timeout):

    python benchmarks/gpu/step_bench.py --batch 1 --attention sdpa_flash --compile-blocks --steps 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import animatex_train  # noqa: F401  (compat shim first)
from animatex_train.models.attention import set_attention_backend
from animatex_train.models.config import DenoiserConfig, tiny_denoiser_config
from animatex_train.models.flops import count_forward_flops
from animatex_train.models.unet import AnimateXDenoiser, DenoiserConditions
from animatex_train.training.activation_checkpointing import apply_activation_checkpointing
from animatex_train.training.performance import PerformanceConfig, apply_performance_levers


@dataclass(frozen=True)
class ClipShape:
    frames: int
    height: int
    width: int


PAPER_CLIP = ClipShape(32, 768, 512)
TINY_CLIP = ClipShape(4, 64, 64)


def denoiser_config(tiny: bool) -> DenoiserConfig:
    """The paper denoiser (or the tiny one), with each sample's keypoints paired with that sample."""
    config = tiny_denoiser_config() if tiny else DenoiserConfig()
    config.ipi.keypoint_row_order = "per_sample"
    return config


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Timer:
    """CUDA events on a GPU, the host clock (after a sync) elsewhere; milliseconds."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.end.record()
            self.end.synchronize()
            self.ms = self.start.elapsed_time(self.end)
        else:
            self.ms = (time.perf_counter() - self.t0) * 1e3


def matmul_peak_tflops(device: torch.device, n: int = 8192, repeats: int = 10) -> dict:
    """Dense bf16 matmul rate on random data (4 rotating input sets), median of ``repeats`` timed products."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator(device=device).manual_seed(0)
    pairs = [
        (
            torch.randn(n, n, device=device, dtype=dtype, generator=g),
            torch.randn(n, n, device=device, dtype=dtype, generator=g),
        )
        for _ in range(4)
    ]
    for a, b in pairs[:3]:
        a @ b  # noqa: B018 - warm-up (handles, clocks)
    times = []
    for i in range(repeats):
        a, b = pairs[i % len(pairs)]
        with _Timer(device) as timer:
            a @ b  # noqa: B018
        times.append(timer.ms)
    median = statistics.median(times)
    return {"n": n, "dtype": str(dtype), "median_ms": median, "tflops": 2 * n**3 / (median * 1e-3) / 1e12}


def make_inputs(config: DenoiserConfig, clip: ClipShape, batch: int, device: torch.device, seed: int = 0):
    """Random (never zero) latents, timesteps, target and every condition, shaped like a training batch."""
    g = torch.Generator(device=device).manual_seed(seed)
    f, h, w = clip.frames, clip.height // 8, clip.width // 8

    def randn(*shape):
        return torch.randn(*shape, device=device, generator=g)

    conditions = DenoiserConditions(
        image_embedding=randn(batch, config.context_dim),
        local_image=torch.rand(batch, 3, 1, clip.height, clip.width, device=device, generator=g),
        pose_images=torch.rand(batch, 3, f + 1, clip.height, clip.width, device=device, generator=g),
        ref_latent=randn(batch, config.latent_channels, 1, h, w),
        pose_keypoints=torch.rand(batch, f + 1, 2, config.ipi.num_keypoints, device=device, generator=g),
        driving_clip=randn(batch, f + 1, config.ipi.clip_dim),
        ref_latent_keep=torch.ones(batch, device=device),
        local_image_keep=torch.ones(batch, device=device),
    )
    latents = randn(batch, config.latent_channels, f, h, w)
    timesteps = torch.randint(0, 1000, (batch,), device=device, generator=g)
    return latents, timesteps, conditions, randn(batch, config.latent_channels, f, h, w)


class StepBench:
    """One denoiser + AdamW on ``device``, stepped at any micro-batch and attention kernel."""

    def __init__(
        self, device: torch.device, tiny: bool, checkpointing: bool = True, performance: PerformanceConfig | None = None
    ):
        self.device = device
        self.config = denoiser_config(tiny)
        self.clip = TINY_CLIP if tiny else PAPER_CLIP
        start = time.perf_counter()
        with torch.device(device):  # initialise on the device: the CPU takes minutes for 1.8 B parameters
            self.model = AnimateXDenoiser(self.config).train()
        self.build_s = time.perf_counter() - start
        if checkpointing:
            apply_activation_checkpointing(self.model)
        self.compiled_blocks = apply_performance_levers(self.model, performance or PerformanceConfig())
        fused = device.type == "cuda"
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-5, fused=fused or None)
        self.autocast = torch.bfloat16 if device.type == "cuda" else None
        self.forward_flops = count_forward_flops(
            self.config, self.clip.frames, self.clip.height, self.clip.width
        ).forward_flops
        self.params = sum(p.numel() for p in self.model.parameters())

    def step(self, inputs) -> None:
        latents, timesteps, conditions, target = inputs
        with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            prediction = self.model(latents, timesteps, conditions)
        F.mse_loss(prediction.float(), target).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def measure(self, batch: int, attention: str, steps: int, warmup: int, peak_tflops: float | None) -> dict:
        """ms/step (median), samples/s, MFU and peak memory of ``steps`` timed steps after ``warmup``."""
        set_attention_backend(attention)
        inputs = make_inputs(self.config, self.clip, batch, self.device)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else 0
        start = time.perf_counter()
        for _ in range(warmup):
            self.step(inputs)
        _sync(self.device)
        warmup_s = time.perf_counter() - start
        times = []
        for _ in range(steps):
            with _Timer(self.device) as timer:
                self.step(inputs)
            times.append(timer.ms)
        ms = statistics.median(times)
        model_tflops = 3 * self.forward_flops * batch / (ms * 1e-3) / 1e12
        result = {
            "batch": batch,
            "attention": attention,
            "ms_per_step": ms,
            "ms_all": times,
            "warmup_s": warmup_s,
            "samples_per_s": batch / (ms * 1e-3),
            "model_tflops_per_s": model_tflops,
            "mfu": model_tflops / peak_tflops if peak_tflops else None,
        }
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
            result.update(
                peak_memory_gib=peak / 2**30,
                step_memory_gib=(peak - before) / 2**30,
                reserved_gib=torch.cuda.max_memory_reserved(self.device) / 2**30,
            )
        return result

    def profile(self, batch: int, attention: str, top: int = 25) -> dict:
        """Kernel time by name for one step (after one warm-up), and its shares by kernel family."""
        from torch.profiler import ProfilerActivity, profile

        set_attention_backend(attention)
        inputs = make_inputs(self.config, self.clip, batch, self.device)
        self.step(inputs)
        _sync(self.device)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            self.step(inputs)
            _sync(self.device)
        events = [e for e in prof.key_averages() if _device_time(e) > 0]
        kernel_events = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA] or events
        total = sum(_device_time(e) for e in kernel_events) or 1.0
        rows = sorted(kernel_events, key=_device_time, reverse=True)
        families: dict[str, float] = {}
        for e in kernel_events:
            families[_family(e.key)] = families.get(_family(e.key), 0.0) + _device_time(e) / total
        return {
            "batch": batch,
            "attention": attention,
            "device_time_ms": total / 1e3,
            "top": [
                {"kernel": e.key[:140], "ms": _device_time(e) / 1e3, "share": _device_time(e) / total, "calls": e.count}
                for e in rows[:top]
            ],
            "families": dict(sorted(families.items(), key=lambda kv: -kv[1])),
        }


def _device_time(event) -> float:
    """Microseconds on the device (CUDA kernels) or on the CPU (CPU-only profiles)."""
    return float(getattr(event, "device_time_total", 0.0) or getattr(event, "self_cpu_time_total", 0.0))


_FAMILIES = (
    ("attention", ("flash", "fmha", "attention", "cudnn_generated_fort_native_sdpa", "sdpa")),
    ("matmul/conv", ("gemm", "sm90_xmma", "cutlass", "conv", "cudnn", "implicit", "xmma", "nvjet", "winograd")),
    ("norm", ("norm",)),
    ("optimizer", ("adam", "foreach", "multi_tensor")),
    ("copy/layout", ("copy", "transpose", "cat", "contiguous", "index")),
    ("elementwise", ("elementwise", "vectorized", "silu", "gelu", "mul", "add", "reduce")),
)


def _family(name: str) -> str:
    lowered = name.lower()
    for family, needles in _FAMILIES:
        if any(n in lowered for n in needles):
            return family
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny denoiser and clip (CPU dry runs)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--attention", default="sdpa")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile-blocks", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    performance = PerformanceConfig(compile_blocks=args.compile_blocks, channels_last=args.channels_last)
    start = time.perf_counter()
    bench = StepBench(device, args.tiny, performance=performance)
    result = bench.measure(args.batch, args.attention, args.steps, args.warmup, args.peak_tflops)
    result.update(
        compile_blocks=args.compile_blocks,
        channels_last=args.channels_last,
        compiled_blocks=bench.compiled_blocks,
        total_s=time.perf_counter() - start,
    )
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
