"""Predicted weak-scaling efficiency of each cluster overlay at 8, 64 and 256 GPUs (a model on paper, CPU only).

From a measured single-GPU step time, the bytes each ZeRO stage moves per optimizer step, and the link bandwidths
of common nodes, it prints the communication per GPU, the part of it left exposed after overlap with backward, and
E(N) = compute / (compute + exposed communication) for the overlay's micro-batch and accumulation. The formula,
its assumptions and what it leaves out are in docs/scaling.md.

    python benchmarks/scaling_model.py [--step-s-per-sample 1.63] [--nvlink-gbs 900] [--ib-gbit 400]

The default step times were measured on one H200 (benchmarks/gpu, 2026-12-04: the paper denoiser's step at
32x768x512, bf16 autocast, block checkpointing: 1.73 / 3.42 / 6.53 s at micro-batch 1 / 2 / 4).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PARAMS = 1_817_708_556  # the paper denoiser (DenoiserConfig()), all trainable
MEASURED_STEP_S = {1: 1.728, 2: 3.417, 4: 6.534}  # H200, per micro-batch (benchmarks/gpu report, run 1)
# A100's dense bf16 rate is 312 TFLOP/s against the H100/H200's ~989 (datasheets): its step is taken as
# that ratio slower, i.e. the same MFU [assumption: the A100 was not measured].
A100_SLOWDOWN = 989.0 / 312.0


@dataclass(frozen=True)
class Overlay:
    name: str
    stage: int
    offload: bool
    micro_batch: int
    accumulation: int
    gpus_per_node: int
    a100: bool


def read_overlay(path: Path) -> Overlay:
    values = yaml.safe_load(path.read_text())
    trainer, data = values["trainer"], values["data"]
    strategy = trainer["strategy"]
    init = strategy.get("init_args", {}) if isinstance(strategy, dict) else {}
    deepspeed = isinstance(strategy, dict) and "DeepSpeed" in strategy["class_path"]
    return Overlay(
        path.stem,
        init.get("stage", 0) if deepspeed else 0,
        bool(init.get("offload_optimizer")),
        int(data["batch_size"]),
        int(trainer.get("accumulate_grad_batches", 1)),
        int(trainer["devices"]),
        path.stem.startswith("a100"),
    )


def step_seconds(micro_batch: int, per_sample_s: float | None, a100: bool) -> float:
    """Compute time of one micro-batch: measured where we have it, else linear in the micro-batch."""
    if per_sample_s is not None:
        seconds = per_sample_s * micro_batch
    elif micro_batch in MEASURED_STEP_S:
        seconds = MEASURED_STEP_S[micro_batch]
    else:
        seconds = MEASURED_STEP_S[4] / 4 * micro_batch
    return seconds * (A100_SLOWDOWN if a100 else 1.0)


def communication(overlay: Overlay, gpus: int, checkpointing: bool = True) -> tuple[float, float]:
    """(bytes each GPU sends per optimizer step that backward can hide, bytes it cannot hide).

    Ring collectives move (N-1)/N of the buffer per GPU for a reduce-scatter or an all-gather (twice that for an
    all-reduce). Gradients and parameters travel in bf16 (2 bytes per parameter).
    """
    if gpus == 1:
        return 0.0, 0.0
    share = (gpus - 1) / gpus
    buffer = 2.0 * PARAMS
    if overlay.stage in (0, 1):  # DDP / ZeRO-1: one gradient all-reduce per optimizer step (no_sync between)
        hidden, exposed = 2 * share * buffer, 0.0
        if overlay.stage == 1:  # ZeRO-1: the updated parameter partitions are all-gathered after the step
            hidden, exposed = share * buffer, share * buffer
        return hidden, exposed
    if overlay.stage == 2:  # reduce-scatter every micro-batch (partitioned gradients), all-gather after the step
        return overlay.accumulation * share * buffer, share * buffer
    # ZeRO-3: every micro-batch gathers the parameters for forward, again for backward (and once more for the
    # recompute under activation checkpointing), and reduce-scatters the gradients; all overlappable in principle.
    gathers = 3 if checkpointing else 2
    return overlay.accumulation * (gathers + 1) * share * buffer, 0.0


def bandwidth_bytes_per_s(gpus: int, gpus_per_node: int, nvlink_gbs: float, ib_gbit: float, efficiency: float) -> float:
    """Per-GPU bandwidth of the slowest hop of the ring: NVLink inside a node, InfiniBand across nodes."""
    per_direction = nvlink_gbs / 2 * 1e9 if gpus <= gpus_per_node else ib_gbit / 8 * 1e9
    return per_direction * efficiency


def efficiency(overlay: Overlay, gpus: int, args: argparse.Namespace) -> dict:
    compute = overlay.accumulation * step_seconds(overlay.micro_batch, args.step_s_per_sample, overlay.a100)
    hidden_bytes, exposed_bytes = communication(overlay, gpus)
    bandwidth = bandwidth_bytes_per_s(gpus, overlay.gpus_per_node, args.nvlink_gbs, args.ib_gbit, args.link_efficiency)
    backward = compute * args.backward_share
    hideable = hidden_bytes / bandwidth
    exposed = max(0.0, hideable - args.overlap * backward) + exposed_bytes / bandwidth
    offload = 0.0
    if overlay.offload:  # gradients to the host and parameters back over PCIe, plus the host Adam step
        shard = PARAMS / gpus
        offload = 2 * 2.0 * shard / (args.pcie_gbs * 1e9) + shard / (args.cpu_adam_params_per_s * 1e9)
    total = compute + exposed + offload
    return {
        "gpus": gpus,
        "compute_s": compute,
        "comm_gb": (hidden_bytes + exposed_bytes) / 1e9,
        "exposed_s": exposed,
        "offload_s": offload,
        "efficiency": compute / total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--step-s-per-sample",
        type=float,
        default=None,
        help="single-GPU seconds per sample (default: the H200 measurement per micro-batch)",
    )
    parser.add_argument("--nvlink-gbs", type=float, default=900.0, help="NVLink GB/s per GPU, both directions")
    parser.add_argument("--ib-gbit", type=float, default=400.0, help="InfiniBand Gb/s per GPU")
    parser.add_argument("--link-efficiency", type=float, default=0.8, help="achieved / nominal link bandwidth")
    parser.add_argument("--overlap", type=float, default=0.8, help="fraction of backward that hides communication")
    parser.add_argument(
        "--backward-share",
        type=float,
        default=0.75,
        help="backward (with recompute) as a fraction of the step's compute",
    )
    parser.add_argument("--pcie-gbs", type=float, default=25.0, help="host<->GPU GB/s per GPU (offload)")
    parser.add_argument("--cpu-adam-params-per-s", type=float, default=1.0, help="host Adam, G parameters/s per GPU")
    args = parser.parse_args()
    overlays = [
        read_overlay(p) for p in sorted((REPO / "recipes" / "cluster").glob("*.yaml")) if not p.stem.startswith("cpu")
    ]
    print(
        f"{'overlay':<22} {'ZeRO':>4} {'mb x acc':>8} {'GPUs':>5} {'compute s':>9} {'comm GB':>8} "
        f"{'exposed s':>9} {'offload s':>9} {'E(N)':>6}"
    )
    for overlay in overlays:
        for gpus in (8, 64, 256):
            r = efficiency(overlay, gpus, args)
            print(
                f"{overlay.name:<22} {overlay.stage:>4} {overlay.micro_batch:>3} x {overlay.accumulation:<3} "
                f"{gpus:>5} {r['compute_s']:>9.2f} {r['comm_gb']:>8.1f} {r['exposed_s']:>9.3f} "
                f"{r['offload_s']:>9.3f} {r['efficiency']:>6.3f}"
            )


if __name__ == "__main__":
    main()
