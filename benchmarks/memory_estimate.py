"""Training memory per GPU of the paper denoiser: ZeRO stage x activation checkpointing x resolution x frames.

    python benchmarks/memory_estimate.py            # prints the tables of docs/memory.md (about a minute on CPU)

Two parts, added up:

1. Model states (weights, gradients, Adam state) per GPU, from DeepSpeed's estimators
   (``estimate_zero2_model_states_mem_needs``, ``estimate_zero3_model_states_mem_needs``) for the paper
   model's parameter count, counted on the meta device. ZeRO-1 and DDP have no estimator; they use the same
   byte counts (DeepSpeed's "2 + 18 per parameter", ZeRO paper section 5) with the gradients unsharded. The
   ZeRO-3 "largest layer" is the largest denoiser block, since ``AnimateXDeepSpeedStrategy`` gathers one
   block at a time. The estimators take the parameter count, not the module: ``model_to_params``
   deduplicates by ``data_ptr``, which is 0 for every meta tensor.
2. Activations, measured rather than modelled: the denoiser's real forward runs on the meta device in bf16
   (DeepSpeed's bf16 mode: the module itself is bf16) at the real clip shape, under
   ``torch.autograd.graph.saved_tensors_hooks``, which sees every tensor autograd keeps for backward; distinct
   storages are summed, parameters excluded. Attention is replaced by a stand-in that saves what
   flash-attention saves (q, k, v, output, fp32 log-sum-exp), the GPU kernel the recipes use. The same count
   on real CPU tensors for the tiny config gives the same bytes (checked below), so meta is exact accounting
   of this code path. Peak during backward = saved bytes + the largest block's own saved bytes (recomputed
   once under checkpointing; without it, already included) + 2 x the largest single activation (its gradient
   and one temporary). Allocator fragmentation, the CUDA context and kernel workspaces come on top: we add
   a flat 3 GiB ("overhead") [assumption].
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from unittest import mock

import torch
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

import animatex_train  # noqa: F401  (torchvision compat shim before anything else)
from animatex_train.models.config import DenoiserConfig, tiny_denoiser_config
from animatex_train.models.unet import AnimateXDenoiser, DenoiserConditions
from animatex_train.training.activation_checkpointing import (
    apply_activation_checkpointing,
    outermost_blocks,
    remove_activation_checkpointing,
)

GIB = 1024**3
OVERHEAD_GIB = 3.0  # CUDA context + cuDNN/cuBLAS workspaces + fragmentation [assumption]
# What torch.cuda.mem_get_info reports as total on each card (GiB), not the marketing GB.
CAPACITIES_GIB = {"A100 40GB (39.4 GiB)": 39.4, "A100/H100 80GB (79.1 GiB)": 79.1, "H200 141GB (139.8 GiB)": 139.8}
ATTENTION_USERS = ("transformers", "condition_encoders", "pose_indicator.implicit")


class _FlashLikeAttention(torch.autograd.Function):
    """Saves exactly flash-attention's backward inputs; computes nothing (the output's values are irrelevant)."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q)  # (b, s, heads, d)
        lse = q.new_empty(q.shape[0], q.shape[2], q.shape[1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):  # never called: only forward memory is measured
        raise NotImplementedError


def _flash_like(q, k, v, dropout_p: float = 0.0):
    return _FlashLikeAttention.apply(q, k, v)


@contextlib.contextmanager
def flash_memory_model():
    with contextlib.ExitStack() as stack:
        for name in ATTENTION_USERS:
            stack.enter_context(mock.patch(f"animatex_train.models.{name}.attention", _flash_like))
        yield


@dataclass
class Activations:
    """Bytes kept for backward by one forward of one sample."""

    saved: int
    largest_block: int
    largest_tensor: int

    @property
    def peak(self) -> int:
        return self.saved + self.largest_block + 2 * self.largest_tensor


def measure_activations(
    model: AnimateXDenoiser, frames: int, height: int, width: int, device: str, dtype: torch.dtype
) -> Activations:
    """Saved-for-backward bytes of one training forward (every condition present) of one sample."""
    c = model.config
    h, w, f = height // 8, width // 8, frames
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape):
        return (
            torch.rand(*shape, generator=g).to(device, dtype)
            if device == "cpu"
            else torch.empty(*shape, device=device, dtype=dtype)
        )

    cond = DenoiserConditions(
        image_embedding=rand(1, c.context_dim),
        local_image=rand(1, 3, 1, height, width),
        pose_images=rand(1, 3, f + 1, height, width),
        ref_latent=rand(1, c.latent_channels, 1, h, w),
        pose_keypoints=rand(1, f + 1, 2, c.ipi.num_keypoints),
        driving_clip=rand(1, f + 1, c.ipi.clip_dim),
    )
    latents, timesteps = rand(1, c.latent_channels, f, h, w), torch.zeros(1, dtype=torch.long, device=device)
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    storages: dict[int, tuple[int, str]] = {}
    current = ["other"]
    blocks = outermost_blocks(model)

    def enter(name: str):
        return lambda module, args: current.append(name)  # returns None: the inputs stay as they are

    def leave(module, args, output) -> None:  # must return None, or the hook would replace the block's output
        current.pop()

    handles = [b.register_forward_pre_hook(enter(f"block{i}")) for i, b in enumerate(blocks)]
    handles += [b.register_forward_hook(leave) for b in blocks]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in params and storage._cdata not in storages:
            storages[storage._cdata] = (storage.nbytes(), current[-1])
        return tensor

    try:
        with flash_memory_model(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(latents, timesteps, cond)
        del out
    finally:
        for handle in handles:
            handle.remove()
    per_block: dict[str, int] = {}
    for nbytes, owner in storages.values():
        per_block[owner] = per_block.get(owner, 0) + nbytes
    return Activations(
        saved=sum(n for n, _ in storages.values()),
        largest_block=max(v for k, v in per_block.items() if k != "other"),
        largest_tensor=max(n for n, _ in storages.values()),
    )


def activation_table(config: DenoiserConfig, shapes: list[tuple[int, int, int]]) -> dict:
    """{(frames, height, width, checkpointing): Activations} for the paper model in bf16 on the meta device."""
    with torch.device("meta"):
        model = AnimateXDenoiser(config).to(torch.bfloat16).train()
    results = {}
    for frames, height, width in shapes:
        full = measure_activations(model, frames, height, width, "meta", torch.bfloat16)
        apply_activation_checkpointing(model)
        ckpt = measure_activations(model, frames, height, width, "meta", torch.bfloat16)
        remove_activation_checkpointing(model)
        results[frames, height, width, False] = Activations(full.saved, 0, full.largest_tensor)  # block is in saved
        results[frames, height, width, True] = Activations(ckpt.saved, full.largest_block, full.largest_tensor)
    return results


def check_meta_equals_cpu() -> tuple[int, int]:
    """Saved bytes of the tiny config at 8 frames 64x64: meta device vs real CPU tensors (must be equal)."""
    config = tiny_denoiser_config()
    torch.manual_seed(0)
    model = AnimateXDenoiser(config).train()
    cpu = measure_activations(model, 8, 64, 64, "cpu", torch.float32).saved
    with torch.device("meta"):
        meta_model = AnimateXDenoiser(config).train()
    meta = measure_activations(meta_model, 8, 64, 64, "meta", torch.float32).saved
    return cpu, meta


def model_states(params: int, largest_block: int, gpus: int) -> dict[str, float]:
    """GiB per GPU of weights + gradients + Adam state, bf16 training with fp32 master weights."""
    nodes = max(1, gpus // 8)
    per_node = gpus // nodes
    zero2 = estimate_zero2_model_states_mem_needs(params, per_node, nodes, cpu_offload=False)[1]
    zero2_off = estimate_zero2_model_states_mem_needs(params, per_node, nodes, cpu_offload=True)[1]
    zero3 = estimate_zero3_model_states_mem_needs(
        params, largest_block, per_node, nodes, cpu_offload=False, cpu_offload_params=False, zero_init=False
    )[1]
    zero3_off = estimate_zero3_model_states_mem_needs(
        params, largest_block, per_node, nodes, cpu_offload=True, cpu_offload_params=True, zero_init=False
    )[1]
    return {
        "DDP (torch AMP, fp32 weights)": 16 * params / GIB,  # 4 weights + 4 grads + 8 Adam, replicated
        "ZeRO-1": (4 * params + 16 * params / gpus) / GIB,  # DeepSpeed's 2+18 with bf16 grads unsharded
        "ZeRO-2": zero2 / GIB,
        "ZeRO-2 + offload optimizer": zero2_off / GIB,
        "ZeRO-3": zero3 / GIB,
        "ZeRO-3 + offload optimizer+params": zero3_off / GIB,
    }


def main() -> None:
    start = time.perf_counter()
    config = DenoiserConfig()
    with torch.device("meta"):
        model = AnimateXDenoiser(config)
    params = sum(p.numel() for p in model.parameters())
    largest_block = max(sum(p.numel() for p in b.parameters()) for b in outermost_blocks(model))
    print(
        f"paper denoiser: {params:,} parameters; largest block {largest_block:,}; EMA (fp32, on GPU) "
        f"{4 * params / GIB:.1f} GiB unless model.ema.on_cpu\n"
    )
    print("Model states per GPU (GiB), bf16 + fp32 master weights + Adam:")
    gpu_counts = (8, 32)
    states = {n: model_states(params, largest_block, n) for n in gpu_counts}
    print(f"  {'strategy':<36}" + "".join(f"{f'{n} GPUs':>10}" for n in gpu_counts))
    for name in states[8]:
        print(f"  {name:<36}" + "".join(f"{states[n][name]:>10.1f}" for n in gpu_counts))
    cpu, meta = check_meta_equals_cpu()
    print(f"\nactivation accounting check (tiny config, 8f 64x64, fp32): CPU {cpu:,} B, meta {meta:,} B")
    shapes = [(16, 256, 384), (32, 256, 384), (16, 512, 768), (32, 512, 768)]
    acts = activation_table(config, shapes)
    print("\nActivations per sample (GiB, bf16, flash-attention memory), peak during backward (saved):")
    print(f"  {'frames':>6} {'HxW':>9} {'no checkpointing':>22} {'block checkpointing':>22}")
    for frames, height, width in shapes:
        off, on = acts[frames, height, width, False], acts[frames, height, width, True]
        print(
            f"  {frames:>6} {f'{width}x{height}':>9} {off.peak / GIB:>12.1f} ({off.saved / GIB:5.1f})"
            f"{on.peak / GIB:>15.1f} ({on.saved / GIB:5.1f})"
        )
    print(f"\nTotal per GPU at 8 GPUs, micro-batch 1 (GiB; + {OVERHEAD_GIB:.0f} GiB overhead; EMA on CPU):")
    print(f"  {'strategy':<36} {'ckpt':>5}" + "".join(f"{f'{f}f {w}x{h}':>15}" for f, h, w in shapes))
    for name, state in states[8].items():
        for checkpointing in (False, True):
            row = [state + acts[f, h, w, checkpointing].peak / GIB + OVERHEAD_GIB for f, h, w in shapes]
            print(f"  {name:<36} {'yes' if checkpointing else 'no':>5}" + "".join(f"{v:>15.1f}" for v in row))
    print(
        "\nLargest micro-batch per GPU (every per-sample term scales with the batch), block checkpointing, 8 GPUs, "
        "EMA on CPU (on the GPU: 6.8 GiB less room):"
    )
    for f, h, w in shapes[2:]:
        per_sample = acts[f, h, w, True].peak / GIB
        print(f"  {f} frames {w}x{h} ({per_sample:.1f} GiB per sample):")
        for label, usable in CAPACITIES_GIB.items():
            fits = [
                f"{name.split(' (')[0]} {max(0, int((usable - OVERHEAD_GIB - state) // per_sample))}"
                for name, state in states[8].items()
            ]
            print(f"    {label:<28} " + ", ".join(fits))
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
