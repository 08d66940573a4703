"""Each speed lever computes the same numbers as the plain path (CPU; the GPU benchmark measures their speed).

Tolerances: the levers reorder floating-point work (fused vs multi-tensor AdamW arithmetic, NHWC convolution
kernels, captured graphs), which changes float32 results by a few ulps (~1e-7 relative per op); after a
forward and backward through the tiny UNet that stays below 1e-5. A lever that changed the function (a wrong
layout, a skipped block, a dropped parameter group) moves outputs and gradients by O(1).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from animatex_train.models.attention import get_attention_backend
from animatex_train.models.config import tiny_denoiser_config
from animatex_train.models.unet import AnimateXDenoiser, DenoiserConditions
from animatex_train.training.activation_checkpointing import apply_activation_checkpointing, outermost_blocks
from animatex_train.training.optim import OptimConfig, build_optimizer
from animatex_train.training.performance import (
    PerformanceConfig,
    PerformanceLevers,
    apply_performance_levers,
    to_channels_last,
)


def _model(seed: int = 0) -> AnimateXDenoiser:
    torch.manual_seed(seed)
    model = AnimateXDenoiser(tiny_denoiser_config())
    torch.nn.init.normal_(model.out[-1].weight, std=0.02)  # the zero-initialised head would hide the UNet
    for module in model.modules():  # dropout would draw differently on the two paths
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model.eval()


def _inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    conditions = DenoiserConditions(
        image_embedding=torch.randn(2, 64, generator=g),
        local_image=torch.rand(2, 3, 1, 32, 32, generator=g),
        pose_images=torch.rand(2, 3, 5, 32, 32, generator=g),
        pose_keypoints=torch.rand(2, 5, 2, 18, generator=g),
        driving_clip=torch.randn(2, 5, 64, generator=g),
    )
    return torch.randn(2, 4, 4, 4, 4, generator=g), torch.tensor([3, 700]), conditions


def _forward_backward(model: AnimateXDenoiser, inputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(*inputs)
    (out.square().mean()).backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(a, b, tolerance: float = 1e-5) -> None:
    (out_a, grads_a), (out_b, grads_b) = a, b
    torch.testing.assert_close(out_a, out_b, rtol=tolerance, atol=tolerance)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=tolerance, atol=tolerance, msg=name)


def test_channels_last_computes_the_same_forward_and_gradients():
    plain, nhwc, inputs = _model(), _model(), _inputs()
    assert to_channels_last(nhwc) > 0
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in nhwc.parameters() if p.dim() == 4)
    _assert_same(_forward_backward(plain, inputs), _forward_backward(nhwc, inputs))


def test_compiled_blocks_compute_the_same_forward_and_gradients_with_checkpointing():
    plain, compiled, inputs = _model(), _model(), _inputs()
    for model in (plain, compiled):
        apply_activation_checkpointing(model)
    keys = list(compiled.state_dict())
    count = apply_performance_levers(compiled, PerformanceConfig(compile_blocks=True, compile_backend="aot_eager"))
    assert count == len(outermost_blocks(compiled)) > 0
    assert list(compiled.state_dict()) == keys  # no wrapper level: checkpoints and names unchanged
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    _assert_same(_forward_backward(plain, inputs), _forward_backward(compiled, inputs))
    assert counters["stats"]["unique_graphs"] >= 3  # captured (ResBlock, spatial and temporal transformers at least),
    assert not counters["graph_break"]  # with no graph breaks: not an eager fallback that would pass trivially
    torch._dynamo.reset()


def test_fused_adamw_takes_the_same_steps_as_the_default():
    """Both optimizers get the same gradients each step (recomputing them from weights that differ by an ulp would
    let Adam's normalisation blow up the noise of near-zero gradients); their updates then agree to rounding."""
    models = [_model(), _model()]
    optimizers = [
        build_optimizer(m, OptimConfig(lr=1e-3, ipi_lr=1e-4, fused=fused))
        for m, fused in zip(models, (False, True), strict=True)
    ]
    assert optimizers[1].defaults["fused"] and not optimizers[0].defaults.get("fused")
    assert [g["lr"] for g in optimizers[0].param_groups] == [g["lr"] for g in optimizers[1].param_groups]
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        grads = [
            torch.randn(p.shape, generator=g) * 10.0 ** torch.randint(-6, 1, (), generator=g)
            for p in models[0].parameters()
        ]
        for model, optimizer in zip(models, optimizers, strict=True):
            for param, grad in zip(model.parameters(), grads, strict=True):
                param.grad = grad.clone()
            optimizer.step()
    start = _model()
    for (name, a), b, s in zip(models[0].named_parameters(), models[1].parameters(), start.parameters(), strict=True):
        assert not torch.equal(a, s), name  # every parameter moved (by ~lr per step)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8, msg=name)


def test_fused_defaults_to_the_parameters_device():
    assert not build_optimizer(_model(), OptimConfig()).defaults.get("fused")  # CPU parameters: multi-tensor path


def test_callback_sets_the_attention_kernel_and_restores_it():
    callback = PerformanceLevers(attention="math")
    trainer = SimpleNamespace(strategy=SimpleNamespace(), loggers=[])
    callback.setup(trainer, SimpleNamespace(denoiser=_model()), "fit")
    assert get_attention_backend() == "math"
    callback.teardown(trainer, None, "fit")
    assert get_attention_backend() == "auto"


@pytest.mark.parametrize(
    "strategy",
    [
        type("AnimateXDeepSpeedStrategy", (), {"stage": 3})(),
        type("AnimateXFSDPStrategy", (), {"sharding_strategy": SimpleNamespace(name="FULL_SHARD")})(),
    ],
)
def test_compiled_blocks_are_refused_where_parameters_are_gathered_inside_blocks(strategy):
    callback = PerformanceLevers(compile_blocks=True)
    with pytest.raises(ValueError, match="performance.compile_blocks"):
        callback.setup(SimpleNamespace(strategy=strategy, loggers=[]), SimpleNamespace(denoiser=_model()), "fit")
    assert get_attention_backend() == "auto"


def test_bad_attention_setting_names_the_key():
    with pytest.raises(ValueError, match="performance.attention"):
        PerformanceConfig(attention="xformers")
