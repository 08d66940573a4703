"""On a CUDA GPU: every attention kernel the ``performance.attention`` key offers computes the reference function
in bf16, forward and backward, at the denoiser's real attention shapes (run by ``benchmarks/gpu``).

Tolerance: bf16 operands keep 8 mantissa bits (relative resolution 2**-8 = 0.4 %); the kernels accumulate in
fp32, so their error against an fp32 reference on the same bf16 inputs is a few bf16 ulps of the output.
Relative Frobenius error 1e-2 is well above that and far below what a wrong scale, mask or layout gives (~1).
"""

from __future__ import annotations

import pytest
import torch

from animatex_train.models import attention as attn
from animatex_train.models.config import tiny_denoiser_config
from animatex_train.models.unet import AnimateXDenoiser

pytestmark = pytest.mark.gpu
KERNELS = ["sdpa", "sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "math"] + (
    ["flash_attn"] if attn.HAS_FLASH_ATTN else []
)
# (b, s_q, s_k, heads, d): spatial self-attention of level 1 at 768x512 (48x32 tokens, 10 heads), temporal attention
# over 33 frames at level 0 (6,144 sequences per sample, 5 heads), cross-attention to the 81 context tokens.
SHAPES = {"spatial": (4, 1536, 1536, 10, 64), "temporal": (12288, 33, 33, 5, 64), "cross": (8, 1536, 81, 5, 64)}


def _relative_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    return float((x.float() - reference).norm() / reference.norm())


@pytest.mark.parametrize("shape", SHAPES, ids=list(SHAPES))
@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_matches_fp32_reference_forward_and_backward(kernel, shape):
    b, sq, sk, h, d = SHAPES[shape]
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(b, sq, h, d, device="cuda", generator=g, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(b, sk, h, d, device="cuda", generator=g, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(b, sk, h, d, device="cuda", generator=g, dtype=torch.bfloat16, requires_grad=True)
    upstream = torch.randn(b, sq, h, d, device="cuda", generator=g, dtype=torch.bfloat16)
    with attn.use_attention_backend(kernel):
        out = attn.attention(q, k, v)
    grads = torch.autograd.grad(out, (q, k, v), upstream)
    reference_inputs = [t.detach().float().requires_grad_() for t in (q, k, v)]
    reference = attn.naive_attention(*reference_inputs)
    reference_grads = torch.autograd.grad(reference, reference_inputs, upstream.float())
    assert _relative_error(out, reference) < 1e-2
    for grad, reference_grad in zip(grads, reference_grads, strict=True):
        assert _relative_error(grad, reference_grad) < 2e-2


def test_denoiser_output_is_the_same_under_every_kernel():
    """The tiny denoiser in bf16 autocast gives the same prediction through flash, cuDNN, efficient and math."""
    config = tiny_denoiser_config()
    with torch.device("cuda"):
        model = AnimateXDenoiser(config).eval()
        torch.nn.init.normal_(model.out[-1].weight, std=0.02)  # the zero-initialised head would hide everything
        g = torch.Generator(device="cuda").manual_seed(1)
        latents = torch.randn(2, 4, 4, 8, 8, generator=g, device="cuda")
        timesteps = torch.tensor([10, 900], device="cuda")
    outputs = {}
    for kernel in ("math", "sdpa_flash", "sdpa_efficient", "sdpa"):
        with attn.use_attention_backend(kernel), torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            outputs[kernel] = model(latents, timesteps).float()
    for kernel, out in outputs.items():
        assert torch.isfinite(out).all()
        assert _relative_error(out, outputs["math"]) < 2e-2, kernel
