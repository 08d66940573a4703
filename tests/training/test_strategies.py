"""The tiny recipe through the CLI on 2 CPU processes (gloo): DDP, DeepSpeed ZeRO-1/2/3 and FSDP, all through
``training/strategy.py`` (DDP: Lightning's own), compared step by step, plus ZeRO checkpoint export.

Tolerance of the loss comparison. Every run sees the same batches on the same ranks and draws the same
timesteps, noise and dropout masks (the system seeds them per batch), in float32. What differs between
strategies is only the order of floating-point operations: how gradients are averaged across the two ranks
(DDP buckets vs ZeRO reduce(-scatter) partitions vs FSDP reduce-scatter) and how the global gradient norm for
clipping is summed. Each step such differences are a few float32 ulps (~1e-7 relative), and a few steps of Adam
amplify them little: measured over 6 steps, ZeRO-1/2 and FSDP match DDP bitwise, ZeRO-3 to 2e-7 relative in
the losses and 6e-5 in the weights. We allow rtol 1e-4 on every loss of both ranks and 5e-4 absolute on the
weights: far above reordering noise, and below what a wrong gradient average or a skipped parameter group does
(Adam moves each weight by about the learning rate, 1e-3, per step, whatever the gradient's scale).

The first DeepSpeed run JIT-compiles a C++ op (~30-55 s) when ``~/.cache/torch_extensions`` is empty.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support.numerics_runs import NUMERICS_PROBE, read_numerics
from support.tiny_dataset import DDP_ARGS, probed_run

from animatex_train.training.export import _load, export_weights, resolve_checkpoint

STEPS = 4
DS = "animatex_train.training.strategy.AnimateXDeepSpeedStrategy"
STRATEGIES: dict[str, list[str]] = {
    "ddp": DDP_ARGS,
    "zero1": ["--trainer.strategy", DS, "--trainer.strategy.stage", "1"],
    "zero2": ["--trainer.strategy", DS, "--trainer.strategy.stage", "2"],
    # ZeRO-3 with activation checkpointing: recomputation must fetch the partitioned parameters again
    "zero3": [
        "--trainer.strategy",
        DS,
        "--trainer.strategy.stage",
        "3",
        "--trainer.strategy.activation_checkpointing",
        "true",
    ],
    # the h100x8_zero3_offload overlay's settings: optimizer state and parameters on the host, bf16, checkpointing
    "zero3_offload_bf16": [
        "--trainer.strategy",
        DS,
        "--trainer.strategy.stage",
        "3",
        "--trainer.strategy.offload_optimizer",
        "true",
        "--trainer.strategy.offload_parameters",
        "true",
        "--trainer.strategy.activation_checkpointing",
        "true",
        "--trainer.precision",
        "bf16-mixed",
    ],
    "fsdp": [
        "--trainer.strategy",
        "animatex_train.training.strategy_fsdp.AnimateXFSDPStrategy",
        "--trainer.strategy.activation_checkpointing",
        "true",
        "--model.ema.enabled",
        "false",
    ],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run directory of each strategy's run (2 processes, STEPS steps), started on first use."""
    # The numerics probe in every run; "ddp" is shared with test_export.py, which passes the same arguments.
    return lambda name: probed_run(tmp_path_factory, name, [*STRATEGIES[name], NUMERICS_PROBE], steps=STEPS)


def _losses(run_dir: Path, rank: int) -> list[list[float]]:
    return json.loads((run_dir / "probe" / f"losses-rank{rank}.json").read_text())


def test_ddp_runs_on_two_gloo_processes(runs):
    run = runs("ddp")
    for rank in (0, 1):
        losses = _losses(run, rank)
        assert [s for s, _ in losses] == list(range(1, STEPS + 1))
        assert all(0.0 < v < 10.0 for _, v in losses)
    assert _losses(run, 0) != _losses(run, 1)  # the ranks saw different batches
    assert (run / "checkpoints" / f"step-{STEPS:09d}" / "COMPLETE").is_file()


@pytest.mark.parametrize("name", ["zero1", "zero2", "zero3", "fsdp"])
def test_losses_and_weights_match_ddp(runs, name):
    reference, run = runs("ddp"), runs(name)
    facts = json.loads((run / "probe" / "facts.json").read_text())
    assert facts["world_size"] == 2
    assert facts["strategy"] == ("AnimateXFSDPStrategy" if name == "fsdp" else "AnimateXDeepSpeedStrategy")
    if name.startswith("zero"):
        assert facts["zero_stage"] == int(name[-1])
    for rank in (0, 1):
        expected, got = _losses(reference, rank), _losses(run, rank)
        assert [s for s, _ in got] == [s for s, _ in expected]
        torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=1e-4, atol=1e-6)
    ddp_weights = load_file(str(reference / "probe" / "final_fp32.safetensors"))
    weights = load_file(str(run / "probe" / "final_fp32.safetensors"))
    assert weights.keys() == ddp_weights.keys()
    worst = max((weights[k] - ddp_weights[k]).abs().max().item() for k in weights)
    assert worst < 5e-4, f"{name}: weights differ from DDP's by up to {worst}"


@pytest.mark.parametrize("name", ["ddp", "zero1", "zero2", "zero3", "fsdp"])
def test_validation_renders_once_with_the_ema_and_training_goes_on(runs, name):
    """Validation with sample rendering on, at steps 2 and 4 of 4 (``probed_run``): every rank renders (a collective
    under ZeRO-3 and FSDP), rank 0 alone writes one clip per validation, rendered with the EMA weights (ZeRO-3: on
    every rank, broadcast from rank 0's shadow; DDP/ZeRO-1/2: rank 0 swaps alone), and the raw weights are back
    bitwise afterwards. FSDP runs without EMA (refused under sharding)."""
    run = runs(name)
    validations = [json.loads((run / "probe" / f"validations-rank{r}.json").read_text()) for r in (0, 1)]
    steps = [STEPS // 2, STEPS]
    for rank in (0, 1):
        assert [v["step"] for v in validations[rank]] == steps
        assert [s for s, _ in _losses(run, rank)] == list(range(1, STEPS + 1))  # trained on after the first one
        assert all(v["after"] == v["before"] for v in validations[rank]), "raw weights not restored bitwise"
    clips = sorted(p.name for p in (run / "samples").glob("*.mp4"))
    expected = [f"step{step:07d}-{v['rendered_keys'][0]}.mp4" for step, v in zip(steps, validations[0], strict=True)]
    assert clips == sorted(expected), "one clip per validation, rank 0's"
    assert all((run / "samples" / c).with_suffix(".png").stat().st_size > 0 for c in clips)
    if name == "fsdp":
        assert all(v["ema"] is None for v in validations[0])
        return
    for v0, v1 in zip(*validations, strict=True):
        assert v0["ema"] is not None and v0["ema"] != v0["before"]  # decay 0.9: the EMA lags the weights
        assert v0["rendered"] == pytest.approx(v0["ema"], rel=1e-12, abs=0.0)  # rank 0 samples with the EMA
        assert v1["ema"] is None  # only rank 0 holds it
        # ZeRO-3: rank 0's EMA reached rank 1's partitions; otherwise rank 1 samples with its raw weights
        assert v1["rendered"] == pytest.approx(v0["ema"] if name == "zero3" else v1["before"], rel=1e-12, abs=0.0)


@pytest.mark.parametrize("name", ["zero1", "zero2", "zero3", "fsdp"])
def test_grad_norm_is_one_global_value_equal_to_ddps(runs, name):
    """``train/grad_norm`` (``AnimateXSystem.grad_norm``): under ZeRO the engine's own norm, under FSDP the one
    ``clip_grad_norm_`` sums over the shards, under DDP ``get_total_norm`` of the averaged gradients. Each is the
    same on both ranks, bitwise, and, for the same data, within 1e-5 relative of DDP's (the summation order of
    the reductions differs; a norm of one rank's shard or of unreduced gradients would be far off)."""
    reference, run = runs("ddp"), runs(name)
    ddp_steps, steps = (
        [read_numerics(reference, r)["steps"] for r in (0, 1)],
        [read_numerics(run, r)["steps"] for r in (0, 1)],
    )
    for records in (*ddp_steps, *steps):
        assert [s["step"] for s in records] == list(range(1, STEPS + 1))
        assert not any(s["skipped"] for s in records)
    norms, ddp_norms = ([s["grad_norm"] for s in records[0]] for records in (steps, ddp_steps))
    assert [s["grad_norm"] for s in steps[1]] == norms and [s["grad_norm"] for s in ddp_steps[1]] == ddp_norms
    torch.testing.assert_close(torch.tensor(norms), torch.tensor(ddp_norms), rtol=1e-5, atol=0.0)


@pytest.mark.parametrize("name", ["zero2", "fsdp"])
def test_batch_reaches_the_step_with_the_loaders_dtypes(runs, name):
    """Lightning's DeepSpeed precision casts the batch to the training dtype before the step (fp32 here: the fp16
    posterior would arrive widened; in bf16 it would lose bits); every strategy must hand it over as loaded."""
    expected = read_numerics(runs("ddp"), 0)["batch_dtypes"]
    assert expected["latent_mean"] == "torch.float16" and expected["ipi_keypoints"] == "torch.float32"
    assert all(read_numerics(runs(name), rank)["batch_dtypes"] == expected for rank in (0, 1))


def test_zero3_partitions_only_the_denoiser(runs):
    run = runs("zero3")
    facts = json.loads((run / "probe" / "facts.json").read_text())
    assert facts["partitioned"] == facts["num_parameters"] > 0  # every denoiser parameter is a ZeRO-3 partition
    assert all(name.startswith("denoiser.") for name in facts["module_parameter_names"])
    assert "vae" in facts["frozen_modules"], "the probe built the VAE before DeepSpeed initialised"
    assert not facts["frozen_params_partitioned"]
    vae_shapes = [shape for _, shape, _ in facts["frozen_modules"]["vae"]]
    assert all(len(shape) >= 1 and min(shape) > 0 for shape in vae_shapes)  # full tensors, not empty partitions
    # the optimizer's fp32 partitions cover exactly the denoiser (plus alignment padding; the tiny VAE alone
    # has ~660k parameters)
    assert 0 <= facts["optimizer_numel"] - facts["trainable_numel"] < 1024
    state = resolve_checkpoint(run / "checkpoints")
    model_states = _load(state / "checkpoint" / "zero_pp_rank_0_mp_rank_00_model_states.pt", trust=False)
    names = [n for group in model_states["param_shapes"] for n in group]
    assert names and all(n.startswith("denoiser.") for n in names)
    assert not model_states.get("frozen_param_shapes")


@pytest.mark.slow  # the first use of DeepSpeed's CPU Adam JIT-compiles it: 50-130 s on 2 cores, ~10 s once cached
def test_zero3_offload_bf16_trains_like_ddp_and_exports(runs, tmp_path):
    """bf16 keeps 8 mantissa bits (relative resolution 2**-8 = 0.4 %): measured within 0.5 % of the fp32 DDP losses
    over the steps; 3 % still catches a wrong reduction or a frozen group. The optimizer runs on the host."""
    reference, run = runs("ddp"), runs("zero3_offload_bf16")
    for rank in (0, 1):
        torch.testing.assert_close(
            torch.tensor(_losses(run, rank)), torch.tensor(_losses(reference, rank)), rtol=3e-2, atol=1e-4
        )
    facts = json.loads((run / "probe" / "facts.json").read_text())
    assert facts["zero_stage"] == 3 and facts["partitioned"] == facts["num_parameters"]
    batch_dtypes = read_numerics(reference, 0)["batch_dtypes"]  # bf16 training, the batch as loaded (fp16, fp32)
    assert all(read_numerics(run, rank)["batch_dtypes"] == batch_dtypes for rank in (0, 1))
    export_weights(run / "checkpoints", tmp_path / "raw.safetensors", weights="raw")
    exported = load_file(str(tmp_path / "raw.safetensors"))
    gathered = load_file(str(run / "probe" / "final_fp32.safetensors"))  # the fp32 master copy, from the host
    assert all(exported[k].dtype == torch.float32 and torch.equal(exported[k], gathered[k]) for k in gathered)


@pytest.mark.parametrize("name", ["zero1", "zero2", "zero3"])
def test_zero_checkpoint_export_equals_gathered_fp32_weights(runs, name, tmp_path):
    run = runs(name)
    gathered = load_file(str(run / "probe" / "final_fp32.safetensors"))
    ema = load_file(str(run / "probe" / "ema.safetensors"))
    raw_path, ema_path = tmp_path / "raw.safetensors", tmp_path / "ema.safetensors"
    export_weights(run / "checkpoints", raw_path, weights="raw")
    export_weights(run / "checkpoints" / f"step-{STEPS:09d}", ema_path, weights="ema")
    raw_export, ema_export = load_file(str(raw_path)), load_file(str(ema_path))
    assert raw_export.keys() == gathered.keys()
    assert all(torch.equal(raw_export[k], gathered[k]) for k in gathered)
    assert all(torch.equal(ema_export[k], ema[k]) for k in ema)
    assert any(not torch.equal(ema_export[k], raw_export[k]) for k in ema)  # decay 0.9 < 1: EMA lags the weights


@pytest.mark.parametrize("precision", ["deepspeed", "fsdp"])
def test_precision_plugins_leave_the_batch_as_the_loader_made_it(precision):
    """Lightning's DeepSpeed and FSDP precisions would cast the whole batch to their input dtype (DDP's never does):
    posterior, CLIP features and keypoints would then differ by strategy. Ours pass a ``Batch`` through unchanged."""
    from animatex_train.data.loading.batch import allocate_batch
    from animatex_train.training.strategy import _DeepSpeedBatchAsLoaded
    from animatex_train.training.strategy_fsdp import _FSDPNormClipping

    batch = allocate_batch(2, 3, (16, 16), clip_dim=8)
    dtypes = {name: getattr(batch, name).dtype for name in ("latent_mean", "latent_std", "ref_clip", "ipi_keypoints")}
    if precision == "deepspeed":
        plugin, other_dtype = _DeepSpeedBatchAsLoaded("bf16-mixed"), torch.bfloat16
    else:
        plugin, other_dtype = _FSDPNormClipping("bf16-true", None, strategy=None), torch.bfloat16
    assert plugin.convert_input(batch) is batch
    assert {name: getattr(batch, name).dtype for name in dtypes} == dtypes
    assert dtypes["latent_mean"] == torch.float16 and dtypes["ipi_keypoints"] == torch.float32
    assert plugin.convert_input(torch.ones(2)).dtype == other_dtype  # other inputs: Lightning's conversion
