"""EMA update: the previous per-tensor loop against ``training.ema.EMA.update`` (chunked ``_foreach_lerp_``).

    python benchmarks/ema_update.py                       # paper denoiser's tensors, a quarter of them, on CPU
    python benchmarks/ema_update.py --fraction 1 --on-cpu # all 7.3 GB (needs ~15 GB of RAM), shadow on the host
    python benchmarks/ema_update.py --model tiny --fraction 1  # the tiny test model's tensors

The parameter shapes are the paper denoiser's (built on the meta device, ``DenoiserConfig()``; ``--model tiny``: the
tests' tiny one); ``--fraction`` keeps the first part of the list so the weights and the shadow fit in memory (the
ratio per byte is what matters). Both
variants run side by side in one process on the same tensors, alternating, and the script prints the median time of
each, their ratio, and the device-to-host copies one update makes with ``--on-cpu`` on an accelerator: one per tensor
before, one per 256 MiB chunk now. On a CPU-only machine the weights already live on the host, so ``--on-cpu`` changes
nothing there; with a GPU (``--device cuda``) it is the configuration of the paper recipe's ``model.ema.on_cpu``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import torch
from torch import nn

import animatex_train  # noqa: F401  (torchvision compat shim before anything else)
from animatex_train.models.config import DenoiserConfig, tiny_denoiser_config
from animatex_train.models.unet import AnimateXDenoiser
from animatex_train.training.ema import CHUNK_BYTES, EMA, EMAConfig, _chunks


def model_shapes(model_size: str = "paper") -> list[torch.Size]:
    config = DenoiserConfig() if model_size == "paper" else tiny_denoiser_config()
    with torch.device("meta"):
        model = AnimateXDenoiser(config)
    return [p.shape for p in model.parameters() if p.requires_grad]


def previous_update(shadow: dict[str, torch.Tensor], params: dict[str, nn.Parameter], decay: float) -> None:
    """The update as it was before: one lerp (and, with the shadow on the host, one copy) per tensor."""
    with torch.no_grad():
        for name, param in params.items():
            target = shadow[name]
            target.lerp_(param.detach().to(target.device, torch.float32), 1.0 - decay)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="paper", choices=["paper", "tiny"], help="whose parameter shapes")
    parser.add_argument("--fraction", type=float, default=0.25, help="share of the paper's tensors used (0, 1]")
    parser.add_argument("--device", default="cpu", help="where the weights live (cpu, cuda)")
    parser.add_argument("--on-cpu", action="store_true", help="keep the shadow on the host (model.ema.on_cpu)")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"], help="weights' dtype")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    device = torch.device(args.device)
    shapes = model_shapes(args.model)
    keep = max(1, round(len(shapes) * args.fraction))
    shapes = shapes[:keep]
    dtype = getattr(torch, args.dtype)
    holder = nn.Module()
    generator = torch.Generator().manual_seed(0)
    for i, shape in enumerate(shapes):
        holder.register_parameter(f"p{i}", nn.Parameter(torch.randn(shape, generator=generator).to(device, dtype)))
    params = dict(holder.named_parameters())
    numel = sum(p.numel() for p in params.values())
    print(
        f"{len(params)} tensors, {numel / 1e9:.3f} G parameters ({4 * numel / 1e9:.2f} GB fp32 shadow), "
        f"weights {args.dtype} on {device}, shadow on {'cpu' if args.on_cpu else device}"
    )

    ema = EMA(EMAConfig(decay=0.999, on_cpu=args.on_cpu))
    module = SimpleNamespace(denoiser=holder)
    ema._reset(module)
    shadow_before = {n: s.clone() for n, s in ema.shadow.items()}

    times: dict[str, list[float]] = {"before (per tensor)": [], "now (chunked foreach)": []}
    for _ in range(args.repeats):
        for label, run in (
            ("before (per tensor)", lambda: previous_update(shadow_before, params, 0.999)),
            ("now (chunked foreach)", lambda: ema.update(module)),
        ):
            _sync(device)
            start = time.perf_counter()
            run()
            _sync(device)
            times[label].append(time.perf_counter() - start)

    worst = max((s - ema.shadow[n]).abs().max().item() for n, s in shadow_before.items())
    for label, values in times.items():
        print(f"  {label:24s} {1e3 * statistics.median(values):9.1f} ms per update (median of {args.repeats})")
    before, now = (statistics.median(v) for v in times.values())
    chunks = sum(1 for _ in _chunks(params))
    print(f"  largest difference between the two shadows after {args.repeats} updates: {worst:.2e}")
    print(
        f"  device-to-host copies per update with --on-cpu on an accelerator: {len(params)} before, {chunks} now "
        f"({CHUNK_BYTES // 2**20} MiB chunks)"
    )
    print(f"speedup (before / now): {before / now:.2f}x")


if __name__ == "__main__":
    main()
