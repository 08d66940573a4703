"""Unit tests of the training components without tests of their own: the numerics guard (non-finite loss and
gradients, loss spikes; also through the real system's step and across two gloo ranks), the optimizer groups and
learning-rate schedule, the EMA callback and the throughput arithmetic.

The modules that import Lightning (``ema``, ``throughput``, the system) are imported inside the tests that use them:
the two-rank guard test spawns processes that import this module, and they need only ``torch`` and ``numerics``.
"""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from animatex_train.training.optim import OptimConfig, build_optimizer, build_scheduler


# --------------------------------------------------------------------------------------------- optimizer
class _ToyDenoiser(nn.Module):
    def __init__(self):
        super().__init__()
        self.ipi = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.blocks = nn.ModuleDict({"attn": nn.Linear(4, 4), "pose_attention": nn.Linear(4, 4)})
        self.not_ipi = nn.Linear(4, 2)  # a name containing "ipi" that is not the IPI
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def _groups_by_name(optimizer) -> dict[str, dict]:
    return {g["name"]: g for g in optimizer.param_groups}


def test_default_rates_are_the_papers():
    config = OptimConfig()
    assert (config.lr, config.ipi_lr) == (5e-5, 5e-7)


def test_ipi_parameters_get_ipi_lr_and_every_trainable_parameter_is_in_one_group():
    model = _ToyDenoiser()
    optimizer = build_optimizer(model, OptimConfig())
    groups = _groups_by_name(optimizer)
    assert groups.keys() == {"base", "ipi"}
    assert groups["base"]["lr"] == 5e-5 and groups["ipi"]["lr"] == 5e-7
    ipi_ids = {id(p) for p in model.ipi.parameters()}
    assert {id(p) for p in groups["ipi"]["params"]} == ipi_ids
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert len(grouped) == len(set(grouped))  # no parameter in two groups
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(grouped) == trainable  # every trainable parameter, no frozen one
    assert not {id(p) for p in model.frozen.parameters()} & set(grouped)


def test_infix_prefixes_and_no_ipi_group_without_ipi_parameters():
    model = _ToyDenoiser()
    config = OptimConfig(ipi_param_prefixes=["ipi.", ".pose_attention."])
    ipi = {id(p) for p in _groups_by_name(build_optimizer(model, config))["ipi"]["params"]}
    assert ipi == {id(p) for p in [*model.ipi.parameters(), *model.blocks["pose_attention"].parameters()]}
    model.ipi.requires_grad_(False)
    optimizer = build_optimizer(model, OptimConfig())
    assert [g["name"] for g in optimizer.param_groups] == ["base"]


def test_paper_denoiser_ipi_group_is_the_implicit_pose_indicator():
    from animatex_train.models.config import DenoiserConfig
    from animatex_train.models.unet import AnimateXDenoiser

    with torch.device("meta"):
        model = AnimateXDenoiser(DenoiserConfig())
    groups = _groups_by_name(build_optimizer(model, OptimConfig()))
    assert {id(p) for p in groups["ipi"]["params"]} == {id(p) for p in model.ipi.parameters()}
    assert len(groups["base"]["params"]) + len(groups["ipi"]["params"]) == len(list(model.parameters()))


def _lr_trace(config: OptimConfig, steps: int, total_steps: int | None = None) -> list[tuple[float, float]]:
    """(base lr, ipi lr) in effect at each optimizer step 0 .. steps-1."""
    optimizer = build_optimizer(_ToyDenoiser(), config)
    scheduler = build_scheduler(optimizer, config, total_steps)
    trace = []
    for _ in range(steps):
        groups = _groups_by_name(optimizer)
        trace.append((groups["base"]["lr"], groups["ipi"]["lr"]))
        optimizer.step()
        scheduler.step()
    return trace


def test_warmup_is_linear_from_zero_then_constant():
    config = OptimConfig(lr=1e-3, ipi_lr=1e-5, lr_warmup_steps=4)
    trace = _lr_trace(config, 8)
    expected = [min(1.0, (s + 1) / 4) for s in range(8)]  # the line through 0 at step -1, reaching 1 at step 3
    assert [b for b, _ in trace] == pytest.approx([1e-3 * m for m in expected], rel=1e-12)
    assert [i for _, i in trace] == pytest.approx([1e-5 * m for m in expected], rel=1e-12)
    assert _lr_trace(OptimConfig(lr_warmup_steps=0), 3) == [(5e-5, 5e-7)] * 3  # no warm-up: the full rate at once


def test_cosine_decays_to_min_lr_ratio_at_lr_decay_steps():
    config = OptimConfig(
        lr=1e-3, ipi_lr=1e-4, lr_warmup_steps=2, lr_schedule="cosine", lr_decay_steps=10, min_lr_ratio=0.1
    )
    base = [b / 1e-3 for b, _ in _lr_trace(config, 14)]
    assert base[:3] == pytest.approx([0.5, 1.0, 1.0])  # warm-up, then the cosine starts at the full rate
    assert base[6] == pytest.approx(0.1 + 0.9 * 0.5)  # half-way (step 6 of 2..10)
    assert base[10:] == pytest.approx([0.1] * 4)  # the floor from lr_decay_steps on
    assert all(a >= b for a, b in zip(base[2:], base[3:], strict=False))
    ipi = [i / 1e-4 for _, i in _lr_trace(config, 14)]
    assert ipi == pytest.approx(base)  # both groups follow the same schedule
    # without lr_decay_steps the schedule spans the run (trainer.max_steps)
    by_total = [b / 1e-3 for b, _ in _lr_trace(OptimConfig(lr=1e-3, lr_warmup_steps=2, lr_schedule="cosine"), 12, 10)]
    assert by_total[10:] == pytest.approx([0.0, 0.0]) and by_total[6] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"lr": 0.0}, "model.optim.lr"),
        ({"ipi_lr": -1e-6}, "ipi_lr"),
        ({"lr_schedule": "linear"}, "lr_schedule"),
        ({"lr_warmup_steps": -1}, "lr_warmup_steps"),
        ({"min_lr_ratio": 1.5}, "min_lr_ratio"),
        ({"min_lr_ratio": -0.1}, "min_lr_ratio"),
        ({"lr_decay_steps": 0}, "lr_decay_steps"),
    ],
)
def test_invalid_optim_config_names_the_key(overrides, key):
    with pytest.raises(ValueError, match=rf"model\.optim\.\S*{key.split('.')[-1]}"):
        OptimConfig(**overrides)


# --------------------------------------------------------------------------------------------- EMA
class _System(nn.Module):
    """What the EMA callback reads of the LightningModule: ``.denoiser``."""

    def __init__(self):
        super().__init__()
        self.denoiser = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
        self.denoiser[1].bias.requires_grad_(False)  # frozen: not averaged, never swapped


def _set_weights(module: _System, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.denoiser.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g))


def _trainable(module: _System) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.denoiser.named_parameters() if p.requires_grad}


def _ema_step(ema, module: _System, step: int) -> None:
    ema.on_train_batch_end(SimpleNamespace(global_step=step), module, None, None, 0)


def test_ema_after_k_updates_matches_the_closed_form():
    from animatex_train.training.ema import EMA, EMAConfig

    module = _System()
    initial = _trainable(module)
    ema = EMA(EMAConfig(decay=0.9))
    ema.on_fit_start(SimpleNamespace(global_step=0), module)
    assert set(ema.shadow) == set(initial)  # the frozen bias is not averaged
    delta = {n: torch.full_like(v, 0.5) for n, v in initial.items()}
    with torch.no_grad():
        for n, p in module.denoiser.named_parameters():
            if p.requires_grad:
                p.add_(delta[n])
    k = 5
    for step in range(1, k + 1):
        _ema_step(ema, module, step)
    assert ema.num_updates == k
    for name, shadow in ema.shadow.items():  # decay^k * init + (1 - decay^k) * (init + delta)
        assert shadow.dtype == torch.float32
        torch.testing.assert_close(shadow, initial[name] + (1 - 0.9**k) * delta[name])


def test_ema_respects_start_step_update_interval_and_accumulation():
    from animatex_train.training.ema import EMA, EMAConfig

    decay, start, every = 0.8, 3, 2
    module = _System()
    ema = EMA(EMAConfig(decay=decay, start_step=start, update_every_n_steps=every))
    ema.on_fit_start(SimpleNamespace(global_step=0), module)
    reference, updates = _trainable(module), 0
    for step in range(1, 12):
        _set_weights(module, seed=step)
        weights = _trainable(module)
        _ema_step(ema, module, step)
        _ema_step(ema, module, step)  # a second micro-batch of the same optimizer step: no second update
        if step <= start:
            reference = weights  # the EMA starts from the weights at start_step
        elif step % every == 0:
            reference = {n: decay * reference[n] + (1 - decay) * weights[n] for n in weights}
            updates += 1
        for name, shadow in ema.shadow.items():
            torch.testing.assert_close(shadow, reference[name], msg=f"step {step}: {name}")
    assert ema.num_updates == updates == 4  # steps 4, 6, 8, 10


def test_swapped_in_loads_the_ema_and_restores_the_raw_weights_bitwise():
    from animatex_train.training.ema import EMA, EMAConfig

    module = _System()
    ema = EMA(EMAConfig(decay=0.5))
    ema.on_fit_start(SimpleNamespace(global_step=0), module)
    for step in range(1, 4):
        _set_weights(module, seed=step)
        _ema_step(ema, module, step)
    raw = {n: p.detach().clone() for n, p in module.denoiser.named_parameters()}
    assert any(not torch.equal(ema.shadow[n], raw[n]) for n in ema.shadow)
    with ema.swapped_in(module):
        for name, param in module.denoiser.named_parameters():
            assert torch.equal(param, ema.shadow[name] if name in ema.shadow else raw[name])
    assert all(torch.equal(p, raw[n]) for n, p in module.denoiser.named_parameters())
    with pytest.raises(RuntimeError, match="sampling failed"), ema.swapped_in(module):
        raise RuntimeError("sampling failed")
    assert all(torch.equal(p, raw[n]) for n, p in module.denoiser.named_parameters())  # restored on errors too


def test_ema_state_round_trips_and_resumes_identically():
    from animatex_train.training.ema import EMA, EMAConfig

    config = EMAConfig(decay=0.7)
    module = _System()
    ema = EMA(config)
    ema.on_fit_start(SimpleNamespace(global_step=0), module)
    for step in range(1, 4):
        _set_weights(module, seed=step)
        _ema_step(ema, module, step)
    buffer = io.BytesIO()
    torch.save(ema.state_dict(), buffer)
    buffer.seek(0)
    resumed = EMA(config)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    resumed.on_fit_start(SimpleNamespace(global_step=3), module)
    assert resumed.num_updates == ema.num_updates == 3
    assert all(torch.equal(resumed.shadow[n], ema.shadow[n]) for n in ema.shadow)
    _ema_step(resumed, module, 3)  # the checkpoint's step again (the rest of its accumulation): no update
    for step in range(4, 6):
        _set_weights(module, seed=step)
        _ema_step(ema, module, step)
        _ema_step(resumed, module, step)
    assert resumed.num_updates == ema.num_updates == 5
    assert all(torch.equal(resumed.shadow[n], ema.shadow[n]) for n in ema.shadow)

    state = ema.state_dict()
    state["shadow"] = {n: v for n, v in state["shadow"].items() if not n.startswith("0.")}
    incomplete = EMA(config)
    incomplete.load_state_dict(state)
    with pytest.raises(RuntimeError, match="lacks 2 parameter"):
        incomplete.on_fit_start(SimpleNamespace(global_step=5), module)


def test_ema_config_validation_and_disabled_ema():
    from animatex_train.training.ema import EMA, EMAConfig

    with pytest.raises(ValueError, match=r"model\.ema\.decay"):
        EMAConfig(decay=1.0)
    with pytest.raises(ValueError, match=r"model\.ema\.update_every_n_steps"):
        EMAConfig(update_every_n_steps=0)
    module = _System()
    ema = EMA(EMAConfig(enabled=False))
    ema.on_fit_start(SimpleNamespace(global_step=0), module)
    _ema_step(ema, module, 1)
    assert not ema.shadow and ema.num_updates == 0
    raw = _trainable(module)
    with ema.swapped_in(module):
        assert all(torch.equal(p, raw[n]) for n, p in _trainable(module).items())


# --------------------------------------------------------------------------------------------- throughput
class _Clock:
    def __init__(self):
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now


def test_throughput_samples_per_second_tflops_and_mfu(monkeypatch):
    from animatex_train.training import throughput

    clock, counted, logged = _Clock(), [], []
    forward_flops = 7e12
    monkeypatch.setattr(throughput, "time", clock)
    peak = 1e15  # the table has a bf16 peak only

    def count_forward_flops(config, num_frames, height, width):
        counted.append((config, num_frames, height, width))
        return SimpleNamespace(forward_flops=forward_flops)

    monkeypatch.setattr(throughput, "count_forward_flops", count_forward_flops)
    monkeypatch.setattr(throughput, "get_available_flops", lambda device, dtype: {torch.bfloat16: peak}.get(dtype))
    monitor = throughput.ThroughputMonitor(log_every_n_steps=2)
    trainer = SimpleNamespace(world_size=2, global_step=0, precision="bf16-mixed")
    module = SimpleNamespace(
        device=torch.device("cpu"),
        config=SimpleNamespace(denoiser="tiny"),
        log_dict=lambda metrics, rank_zero_only: logged.append((metrics, rank_zero_only)),
    )
    batch = SimpleNamespace(batch_size=3, num_frames=8, image_size=(64, 96))

    def step(fetch_s: float, compute_s: float) -> None:
        clock.now += fetch_s
        monitor.on_train_batch_start(trainer, module, batch, 0)
        clock.now += compute_s
        trainer.global_step += 1
        monitor.on_train_batch_end(trainer, module, None, batch, 0)

    step(5.0, 0.5)  # the first fetch precedes the first interval: not measured
    assert not logged
    step(1.0, 0.5)
    ((metrics, rank_zero_only),) = logged
    elapsed = 2.0  # 0.5 + 1.0 + 0.5
    samples = 2 * 3 * 2  # 2 steps x batch 3 x 2 ranks
    assert rank_zero_only
    assert metrics["perf/samples_per_s"] == pytest.approx(samples / elapsed)
    assert metrics["perf/data_wait_fraction"] == pytest.approx(1.0 / elapsed)
    tflops = 3 * forward_flops * samples / elapsed / 2 / 1e12  # training = 3 x forward; per device
    assert metrics["perf/tflops_per_device"] == pytest.approx(tflops)
    assert metrics["perf/mfu"] == pytest.approx(tflops * 1e12 / peak)
    assert counted == [("tiny", 8, 64, 96)]  # counted once per clip shape

    step(0.0, 0.25)  # the next interval holds only its own steps
    step(0.75, 0.25)
    metrics = logged[-1][0]
    assert metrics["perf/samples_per_s"] == pytest.approx(samples / 1.25)
    assert metrics["perf/data_wait_fraction"] == pytest.approx(0.75 / 1.25)

    trainer.precision = "32-true"  # no fp32 peak in the table: TFLOP/s without an MFU
    step(0.0, 1.0)
    step(0.0, 1.0)
    assert "perf/mfu" not in logged[-1][0] and logged[-1][0]["perf/tflops_per_device"] == pytest.approx(tflops)
    assert len(counted) == 1


def test_measured_peak_replaces_the_datasheet_in_the_mfu(monkeypatch):
    from animatex_train.training import throughput

    monkeypatch.setattr(throughput, "count_forward_flops", lambda *a, **k: SimpleNamespace(forward_flops=1e12))
    monkeypatch.setattr(throughput, "get_available_flops", lambda device, dtype: 989e12)
    clock, logged = _Clock(), []
    monkeypatch.setattr(throughput, "time", clock)
    monitor = throughput.ThroughputMonitor(log_every_n_steps=1, peak_tflops=750.0)
    trainer = SimpleNamespace(world_size=1, global_step=0, precision="bf16-mixed")
    module = SimpleNamespace(
        device=torch.device("cpu"),
        config=SimpleNamespace(denoiser="tiny"),
        log_dict=lambda metrics, rank_zero_only: logged.append(metrics),
    )
    batch = SimpleNamespace(batch_size=2, num_frames=8, image_size=(64, 64))
    for _ in range(2):
        monitor.on_train_batch_start(trainer, module, batch, 0)
        clock.now += 1.0
        trainer.global_step += 1
        monitor.on_train_batch_end(trainer, module, None, batch, 0)
    assert logged[-1]["perf/mfu"] == pytest.approx(3 * 1e12 * 2 / 1.0 / 750e12)
    with pytest.raises(ValueError, match="throughput.peak_tflops"):
        throughput.ThroughputMonitor(peak_tflops=0.0)


def test_peak_flops_picks_the_dtype_of_the_precision(monkeypatch):
    from animatex_train.training import throughput

    seen = []
    monkeypatch.setattr(throughput, "get_available_flops", lambda device, dtype: seen.append(dtype) or 123)
    for precision in ("bf16-mixed", "bf16-true", "16-mixed", "32-true"):
        assert throughput._peak_flops(torch.device("cuda"), precision) == 123
    assert seen == [torch.bfloat16, torch.bfloat16, torch.float16, torch.float32]

    def unknown(device, dtype):
        raise KeyError("unknown GPU")

    monkeypatch.setattr(throughput, "get_available_flops", unknown)
    assert throughput._peak_flops(torch.device("cuda"), "bf16-mixed") is None
