"""On a CUDA GPU: the pinned-memory loader path, and a DeepSpeed ZeRO-2 bf16 fit (run by ``benchmarks/gpu``).

* The loader with ``pin_memory`` hands the step pinned host batches whose device copies equal, bit for bit,
  the unpinned loader's batches (the pinning copy must not reorder, alias or truncate anything).
* A 2-step ZeRO-2 bf16 fit of the tiny recipe on the GPU: the batch reaches the step with the dtypes the loader
  made (keypoints and the VAE posterior float32, whatever the strategy's precision), and its checkpoint exports
  to safetensors equal to the fp32 master weights DeepSpeed holds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support.tiny_dataset import build_tiny_dataset, fit_args, fit_env, run_fit

from animatex_train.data.loading.datamodule import DatasetSource, VideoDataModule
from animatex_train.training.export import export_weights

pytestmark = pytest.mark.gpu
PROBES = Path(__file__).resolve().parent


def _batches(manifest: Path, pin: bool, n: int = 3) -> list:
    module = VideoDataModule(
        train=[DatasetSource(str(manifest))],
        batch_size=2,
        num_workers=1,
        num_frames=8,
        epi={"apply_prob": 0.0},
        pin_memory=pin,
        shuffle_buffer=4,
    )
    batches = []
    for batch in module.train_dataloader():
        batches.append(batch)
        if len(batches) == n:
            break
    return batches


def test_pinned_loader_batches_equal_unpinned_ones_on_the_device(tmp_path):
    manifest = build_tiny_dataset(tmp_path / "data")
    pinned, plain = _batches(manifest, pin=True), _batches(manifest, pin=False)
    assert len(pinned) == len(plain) == 3
    for a, b in zip(pinned, plain, strict=True):
        assert a.keys == b.keys
        assert a.latent_mean.is_pinned() and not b.latent_mean.is_pinned()
        on_device = a.to("cuda", non_blocking=True)
        torch.cuda.synchronize()
        for name in ("latent_mean", "latent_std", "ref_clip", "driving_clip", "ipi_keypoints", "ref_image"):
            x, y = getattr(on_device, name), getattr(b, name)
            assert x.is_cuda and x.dtype == y.dtype and torch.equal(x.cpu(), y), name
        assert torch.equal(on_device.pose_images.cpu(), b.pose_images)


def test_zero2_bf16_fit_keeps_batch_dtypes_and_exports_its_checkpoint(tmp_path):
    data = tmp_path / "data"
    build_tiny_dataset(data)
    run_dir = tmp_path / "run"
    probe = f"--trainer.callbacks+={{class_path: gpu_probe.DtypeProbe, init_args: {{out: {run_dir / 'dtypes.json'}}}}}"
    args = [
        *fit_args(data, run_dir, max_steps=2, every_n_steps=2),
        "--trainer.accelerator",
        "gpu",
        "--trainer.devices",
        "1",
        "--trainer.precision",
        "bf16-mixed",
        "--data.pin_memory",
        "true",
        "--trainer.strategy",
        "animatex_train.training.strategy.AnimateXDeepSpeedStrategy",
        "--trainer.strategy.stage",
        "2",
        probe,
    ]
    env = fit_env(PROBES)
    env.pop("DS_ACCELERATOR", None)  # DeepSpeed picks CUDA here
    run_fit(args, env, timeout_s=400)
    seen = json.loads((run_dir / "dtypes.json").read_text())
    assert seen["device"].startswith("cuda")
    for name in ("latent_mean", "latent_std", "ipi_keypoints", "ref_clip", "driving_clip"):
        assert seen["batch"][name] == "torch.float32", (name, seen["batch"][name])
    exported = tmp_path / "raw.safetensors"
    export_weights(run_dir / "checkpoints", exported, weights="raw")
    weights = load_file(str(exported))
    master = load_file(str(run_dir / "master_fp32.safetensors"))
    assert master and set(master) <= set(weights)  # the export also holds the denoiser's persistent buffers
    assert all(torch.equal(weights[k], master[k]) for k in master)
