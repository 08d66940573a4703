"""The attention entry point: SDPA equals the naive reference in fp32; dispatch rules."""

from __future__ import annotations

import contextlib

import pytest
import torch

from animatex_train.models import attention as attn


@pytest.mark.parametrize("shape", [(3, 33, 5, 64), (2, 77, 4, 16), (6, 5, 16, 64)])
def test_sdpa_matches_naive_in_fp32(shape):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(shape, generator=g) for _ in range(3))
    k, v = k[:, : shape[1] // 2 + 1], v[:, : shape[1] // 2 + 1]  # cross-attention lengths differ
    assert torch.allclose(attn.attention(q, k, v), attn.naive_attention(q, k, v), atol=2e-6)


def test_flash_is_not_used_on_cpu_or_fp32():
    q = torch.randn(1, 4, 2, 64)
    assert not attn.flash_applicable(q)
    assert not attn.flash_applicable(q.bfloat16())


def test_backend_override():
    q = torch.randn(2, 9, 3, 8)
    with attn.use_attention_backend("naive"):
        naive = attn.attention(q, q, q)
    assert torch.allclose(naive, attn.attention(q, q, q), atol=1e-6)
    with pytest.raises(ValueError):
        with attn.use_attention_backend("xformers"):  # type: ignore[arg-type]
            pass
    if not attn.HAS_FLASH_ATTN:
        with pytest.raises(RuntimeError, match="flash-attn is not installed"):
            with attn.use_attention_backend("flash_attn"):
                pass
    assert attn.get_attention_backend() == "auto"  # every context restored the previous setting


@pytest.mark.parametrize("backend", ["sdpa", "sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "math"])
def test_every_sdpa_setting_computes_the_reference_on_cpu(backend):
    """Every setting runs on the CPU (a preferred kernel PyTorch lacks there falls back) and computes the reference
    function (fp32, dropout off)."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 17, 3, 32, generator=g) for _ in range(3))
    with attn.use_attention_backend(backend):
        out = attn.attention(q, k, v)
    torch.testing.assert_close(out, attn.naive_attention(q, k, v), atol=2e-6, rtol=1e-5)


def test_preferred_kernel_goes_first_and_others_keep_pytorchs_order(monkeypatch):
    seen = []
    monkeypatch.setattr(
        attn,
        "sdpa_kernel",
        lambda kernels, set_priority=False: seen.append((list(kernels), set_priority)) or contextlib.nullcontext(),
    )
    q = torch.randn(1, 4, 2, 8)
    for backend in ("sdpa_cudnn", "sdpa_efficient", "math"):
        with attn.use_attention_backend(backend):
            attn.attention(q, q, q)
    B = torch.nn.attention.SDPBackend
    assert seen == [
        ([B.CUDNN_ATTENTION, B.FLASH_ATTENTION, B.EFFICIENT_ATTENTION, B.MATH], True),
        ([B.EFFICIENT_ATTENTION, B.FLASH_ATTENTION, B.MATH, B.CUDNN_ATTENTION], True),
        ([B.MATH], False),
    ]
