"""The one attention entry point used by every attention in the denoiser.

Spatial self/cross attention, temporal attention over frames, the keypoint encoder, the IPI's
perceiver layers, the pose attention and the condition time adapters all call ``attention``. By
default (``auto``) it runs flash-attention when it is installed and applicable (CUDA, fp16/bf16, a
supported head dim), otherwise PyTorch's ``scaled_dot_product_attention`` with PyTorch's own kernel
choice. A process-wide setting (``set_attention_backend`` / ``use_attention_backend``; the training
CLI's ``performance.attention`` key) pins one kernel, so a run or a benchmark can compare kernels on
the same model:

* ``flash_attn``: the flash-attn package (fails if it cannot run the inputs);
* ``sdpa``: ``scaled_dot_product_attention``, PyTorch picks the kernel;
* ``sdpa_flash`` / ``sdpa_cudnn`` / ``sdpa_efficient``: SDPA with that kernel first in the priority order
  (``torch.nn.attention.sdpa_kernel(..., set_priority=True)``); calls it cannot run fall back in PyTorch's
  order. A strict pin fails on this model: measured on an H200 (torch 2.11), cuDNN refuses the 1-frame
  adapter attention of the local image (key length 1) and the memory-efficient kernel the reference-latent
  adapter's 12-wide heads, so "prefer" is what a run can use;
* ``math``: SDPA's reference kernel only (always applicable);
* ``naive``: the written-out reference (``naive_attention``), for tests.

Every backend computes the same function; they differ in speed, memory and rounding.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

try:  # flash-attn is an optional extra (GPU machines only); any import failure means "not available".
    from flash_attn import flash_attn_func as _flash_attn_func

    HAS_FLASH_ATTN = True
except Exception:  # noqa: BLE001 - ImportError, or a broken CUDA build raising OSError/RuntimeError
    _flash_attn_func = None
    HAS_FLASH_ATTN = False

AttentionBackend = Literal["auto", "flash_attn", "sdpa", "sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "math", "naive"]
ATTENTION_BACKENDS: tuple[str, ...] = AttentionBackend.__args__
# PyTorch's default order (torch._C._get_sdp_priority_order: flash, efficient, math, cuDNN); a preferred
# kernel moves to the front, the rest keep their order.
_DEFAULT_ORDER = (
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
    SDPBackend.CUDNN_ATTENTION,
)
_SDPA_KERNELS: dict[str, tuple[list[SDPBackend], bool]] = {  # backend -> (kernels, as a priority order)
    "sdpa_flash": ([SDPBackend.FLASH_ATTENTION, *(k for k in _DEFAULT_ORDER if k != SDPBackend.FLASH_ATTENTION)], True),
    "sdpa_cudnn": ([SDPBackend.CUDNN_ATTENTION, *(k for k in _DEFAULT_ORDER if k != SDPBackend.CUDNN_ATTENTION)], True),
    "sdpa_efficient": (
        [SDPBackend.EFFICIENT_ATTENTION, *(k for k in _DEFAULT_ORDER if k != SDPBackend.EFFICIENT_ATTENTION)],
        True,
    ),
    "math": ([SDPBackend.MATH], False),
}
_backend: AttentionBackend = "auto"
# flash-attn launches one grid row per (batch x head); CUDA limits a grid dimension to 65535, and the
# temporal attention has b*h*w sequences (e.g. 6,144 per 768x512 sample), so long batches are split.
_FLASH_MAX_BATCH_HEADS = 65535
_FLASH_HEAD_DIMS = (32, 40, 64, 80, 96, 128, 160, 192, 224, 256)


def set_attention_backend(backend: AttentionBackend) -> AttentionBackend:
    """Pin the attention kernel for the whole process; returns the previous setting."""
    global _backend
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention backend must be one of {', '.join(ATTENTION_BACKENDS)}; got {backend!r}")
    if backend == "flash_attn" and not HAS_FLASH_ATTN:
        raise RuntimeError(
            "attention backend 'flash_attn' requested but flash-attn is not installed (pip install '.[flash]'); "
            "use sdpa_flash for PyTorch's own flash kernel"
        )
    previous, _backend = _backend, backend
    return previous


def get_attention_backend() -> AttentionBackend:
    """The process-wide attention setting."""
    return _backend


@contextlib.contextmanager
def use_attention_backend(backend: AttentionBackend) -> Iterator[None]:
    """Pin an attention backend inside a ``with`` block (benchmarks, tests)."""
    previous = set_attention_backend(backend)
    try:
        yield
    finally:
        set_attention_backend(previous)


def flash_applicable(q: torch.Tensor) -> bool:
    """Whether flash-attn can run these inputs (installed, CUDA, half precision, supported head dim)."""
    return (
        HAS_FLASH_ATTN and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] in _FLASH_HEAD_DIMS
    )


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """Softmax attention with scale ``1/sqrt(head_dim)``.

    Args:
        q: ``(b, s_q, heads, d)``.
        k: ``(b, s_k, heads, d)``.
        v: ``(b, s_k, heads, d)``.
        dropout_p: dropout on the attention weights (pass 0 in eval mode).

    Returns:
        ``(b, s_q, heads, d)``.
    """
    backend = _backend
    if backend == "naive":
        return naive_attention(q, k, v, dropout_p)
    if backend == "flash_attn" or (backend == "auto" and flash_applicable(q)):
        if not flash_applicable(q):
            raise RuntimeError(
                f"flash-attn cannot run dtype={q.dtype}, device={q.device}, head_dim={q.shape[-1]}; "
                "use the 'auto' backend"
            )
        return _flash(q, k, v, dropout_p)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if backend in _SDPA_KERNELS:
        kernels, as_priority = _SDPA_KERNELS[backend]
        with sdpa_kernel(kernels, set_priority=as_priority):
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    else:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    return out.transpose(1, 2)


def _flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    rows = max(1, _FLASH_MAX_BATCH_HEADS // q.shape[2])
    if q.shape[0] <= rows:
        return _flash_attn_func(q.contiguous(), k.contiguous(), v.contiguous(), dropout_p=dropout_p)
    return torch.cat(
        [
            _flash_attn_func(qc.contiguous(), kc.contiguous(), vc.contiguous(), dropout_p=dropout_p)
            for qc, kc, vc in zip(q.split(rows), k.split(rows), v.split(rows), strict=True)
        ]
    )


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """Reference attention written out (softmax in float32), same layout as ``attention``."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    weights = torch.einsum("bqhd,bkhd->bhqk", q.float() * scale, k.float()).softmax(dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return torch.einsum("bhqk,bkhd->bqhd", weights, v.float()).to(q.dtype)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(b, s, heads*d) -> (b, s, heads, d)``."""
    return x.unflatten(-1, (heads, x.shape[-1] // heads))
