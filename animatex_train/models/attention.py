"""The one attention entry point used by every attention in the denoiser.

Spatial self/cross attention, temporal attention over frames, the keypoint encoder, the IPI's
perceiver layers, the pose attention and the condition time adapters all call ``attention``. It
runs flash-attention when it is installed and applicable (CUDA, fp16/bf16, a supported head dim),
otherwise PyTorch's ``scaled_dot_product_attention``. ``naive_attention`` is the reference used in
tests. A process-wide override (``use_attention_backend``) lets benchmarks compare kernels on the
same model.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F

try:  # flash-attn is an optional extra (GPU machines only); any import failure means "not available".
    from flash_attn import flash_attn_func as _flash_attn_func

    HAS_FLASH_ATTN = True
except Exception:  # noqa: BLE001 - ImportError, or a broken CUDA build raising OSError/RuntimeError
    _flash_attn_func = None
    HAS_FLASH_ATTN = False

AttentionBackend = Literal["auto", "flash", "sdpa", "naive"]
_backend: AttentionBackend = "auto"
# flash-attn launches one grid row per (batch x head); CUDA limits a grid dimension to 65535, and the
# temporal attention has b*h*w sequences (e.g. 6,144 per 768x512 sample), so long batches are split.
_FLASH_MAX_BATCH_HEADS = 65535
_FLASH_HEAD_DIMS = (32, 40, 64, 80, 96, 128, 160, 192, 224, 256)


@contextlib.contextmanager
def use_attention_backend(backend: AttentionBackend) -> Iterator[None]:
    """Force an attention backend inside a ``with`` block (benchmarks, tests)."""
    global _backend
    if backend not in ("auto", "flash", "sdpa", "naive"):
        raise ValueError(f"attention backend must be auto, flash, sdpa or naive; got {backend!r}")
    if backend == "flash" and not HAS_FLASH_ATTN:
        raise RuntimeError(
            "attention backend 'flash' requested but flash-attn is not installed (pip install '.[flash]')"
        )
    previous, _backend = _backend, backend
    try:
        yield
    finally:
        _backend = previous


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
    if backend == "flash" or (backend == "auto" and flash_applicable(q)):
        if not flash_applicable(q):
            raise RuntimeError(
                f"flash attention cannot run dtype={q.dtype}, device={q.device}, head_dim={q.shape[-1]}; "
                "use the 'auto' backend"
            )
        return _flash(q, k, v, dropout_p)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout_p)
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
