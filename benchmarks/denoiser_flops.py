"""Parameter count and forward FLOPs per sample of the denoiser, counted on the meta device.

Uses ``torch.utils.flop_counter.FlopCounterMode`` (matmul-class ops: conv, linear, attention) on a
meta-device model, so nothing is allocated and no GPU is needed. Training FLOPs are 3x forward
(docs/performance.md §2.1); activation-checkpoint recompute is not counted.

    python benchmarks/denoiser_flops.py

The last line is ``params: <int> fwd_tflops_per_sample: <float>`` for the paper configuration
(32 frames at 768x512).
"""

from __future__ import annotations

import argparse
import time

import animatex_train  # noqa: F401  (torchvision compat shim before anything else)
from animatex_train.models.config import DenoiserConfig
from animatex_train.models.flops import count_forward_flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    config = DenoiserConfig()
    rows = []
    for name, frames, height, width in (("paper 32f 768x512", 32, 768, 512), ("16f 512x512", 16, 512, 512)):
        start = time.perf_counter()
        result = count_forward_flops(config, num_frames=frames, height=height, width=width)
        rows.append((name, result, time.perf_counter() - start))
    print(f"{'config':<20} {'params':>14} {'fwd TFLOP/sample':>17} {'train TFLOP/sample':>19} {'count s':>8}")
    for name, result, seconds in rows:
        print(
            f"{name:<20} {result.params:>14,} {result.forward_flops / 1e12:>17.2f} "
            f"{3 * result.forward_flops / 1e12:>19.2f} {seconds:>8.1f}"
        )
        for module, flops in result.by_module.items():
            print(f"    {module:<30} {flops / 1e12:>9.3f} TFLOP")
    paper = rows[0][1]
    print(f"params: {paper.params} fwd_tflops_per_sample: {paper.forward_flops / 1e12:.3f}")


if __name__ == "__main__":
    main()
