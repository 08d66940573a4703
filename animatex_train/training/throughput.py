"""Throughput instrumentation: samples/s, TFLOP/s, MFU, data-wait fraction, peak memory.

MFU follows docs/performance.md §2: model FLOPs per sample = 3 x the denoiser's forward FLOPs for the
batch's clip shape (counted once per shape on the meta device), activation-checkpoint recompute not
counted; the peak is ``peak_tflops`` when given (e.g. the bf16 matmul rate measured on the card, as
``benchmarks/gpu`` does), else Lightning's table of datasheet dense bf16/fp16/fp32 peaks per GPU model. The data
wait is the time between the end of one step and the start of the next (fetch + host-to-device copy).
"""

from __future__ import annotations

import time

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.throughput import get_available_flops

from animatex_train.models.flops import count_forward_flops


class ThroughputMonitor(pl.Callback):
    """Logs ``perf/*`` every ``log_every_n_steps`` optimizer steps (averaged over that interval).

    Args:
        log_every_n_steps: interval of the averages.
        count_flops: compute FLOPs/MFU (the first batch of each clip shape costs one meta-device count).
        peak_tflops: the MFU denominator per device in TFLOP/s; None: the datasheet peak for the GPU model and
            precision (Lightning's table; no MFU on unknown hardware).
    """

    def __init__(self, log_every_n_steps: int = 10, count_flops: bool = True, peak_tflops: float | None = None):
        if peak_tflops is not None and peak_tflops <= 0:
            raise ValueError(f"throughput.peak_tflops: expected > 0 TFLOP/s or null, got {peak_tflops}")
        self.log_every_n_steps = log_every_n_steps
        self.count_flops = count_flops
        self.peak_tflops = peak_tflops
        self._flops_per_sample: dict[tuple[int, int, int], int] = {}
        self._reset()

    def _reset(self) -> None:
        self._samples = 0
        self._flops = 0
        self._data_wait = 0.0
        self._interval_start: float | None = None
        self._last_batch_end: float | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int):
        now = time.perf_counter()
        if self._interval_start is None:
            self._interval_start = now
        elif self._last_batch_end is not None:
            self._data_wait += now - self._last_batch_end

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx):
        self._samples += batch.batch_size * trainer.world_size
        if self.count_flops:
            self._flops += self._sample_flops(pl_module, batch) * batch.batch_size * trainer.world_size
        self._last_batch_end = time.perf_counter()
        if trainer.global_step % self.log_every_n_steps or trainer.global_step == getattr(self, "_logged_step", -1):
            return
        self._logged_step = trainer.global_step
        elapsed = self._last_batch_end - self._interval_start
        if elapsed <= 0:
            return
        metrics = {"perf/samples_per_s": self._samples / elapsed, "perf/data_wait_fraction": self._data_wait / elapsed}
        if self.count_flops:
            tflops_per_device = self._flops / elapsed / trainer.world_size / 1e12
            metrics["perf/tflops_per_device"] = tflops_per_device
            peak = self.peak_tflops * 1e12 if self.peak_tflops else _peak_flops(pl_module.device, trainer.precision)
            if peak:
                metrics["perf/mfu"] = tflops_per_device * 1e12 / peak
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            metrics["perf/peak_memory_gib"] = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
        pl_module.log_dict(metrics, rank_zero_only=True)
        self._reset()

    def _sample_flops(self, pl_module: pl.LightningModule, batch) -> int:
        """Training FLOPs (3 x forward) of one sample of this clip shape."""
        f, (height, width) = batch.num_frames, batch.image_size
        key = (f, height, width)
        if key not in self._flops_per_sample:
            forward = count_forward_flops(pl_module.config.denoiser, num_frames=f, height=height, width=width)
            self._flops_per_sample[key] = 3 * forward.forward_flops
        return self._flops_per_sample[key]


def _peak_flops(device: torch.device, precision: str) -> float | None:
    dtype = torch.bfloat16 if "bf16" in str(precision) else torch.float16 if "16" in str(precision) else torch.float32
    try:
        return get_available_flops(device, dtype)
    except Exception:  # noqa: BLE001 - unknown hardware: report TFLOP/s without MFU
        return None
