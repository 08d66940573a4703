"""The non-finite guard (``training/numerics.py``): its decisions and messages, one host sync per optimizer step,
agreement across two gloo ranks, and what a skipped step does to the real system (tiny recipe, in process).

The two-rank test spawns processes that import this module: the modules that import Lightning are imported inside
the tests that use them.
"""

from __future__ import annotations

import io
import json
import logging
import math
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from animatex_train.training.host_sync import HostSyncCounter
from animatex_train.training.numerics import NonFiniteError, NumericsConfig, NumericsGuard

NUMERICS_LOGGER = "animatex_train.training.numerics"
FINITE_NORM = torch.tensor(1.5)


def _guard(**overrides) -> NumericsGuard:
    return NumericsGuard(NumericsConfig(**overrides))


def _step(guard: NumericsGuard, losses: list[float], step: int, norm: float | None = 1.5, keys=("k",)) -> str:
    """One optimizer step: the micro-batches' losses, then the decision."""
    for loss in losses:
        guard.observe_loss(torch.tensor(loss), list(keys))
    return guard.settle(None if norm is None else torch.tensor(norm), step=step, rank=0)


# --------------------------------------------------------------------------------------------- decisions
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_under_stop_names_rank_step_and_samples(bad):
    guard = _guard(policy="stop")
    with pytest.raises(NonFiniteError) as info:
        _step(guard, [bad], step=7, keys=("vid-a-c0", "vid-b-c3"))
    message = str(info.value)
    assert "non-finite loss at step 7 on rank(s) [0]" in message
    assert "vid-a-c0" in message and "vid-b-c3" in message
    assert "model.numerics.policy" in message  # says how to skip instead


def test_finite_steps_are_applied_under_both_policies():
    for policy in ("stop", "skip"):
        guard = _guard(policy=policy)
        assert _step(guard, [0.25], step=0) == "apply"
        assert _step(guard, [0.25], step=1, norm=None) == "apply"  # no norm known: the losses alone decide
        assert guard.num_skipped == 0


def test_non_finite_gradient_norm_is_a_non_finite_step(caplog):
    with pytest.raises(NonFiniteError, match=r"non-finite gradient at step 3 \(global gradient norm nan.*\['k0'\]"):
        _step(_guard(policy="stop"), [0.5], step=3, norm=math.nan, keys=("k0",))
    caplog.set_level(logging.WARNING, logger=NUMERICS_LOGGER)
    skip = _guard(policy="skip")
    assert _step(skip, [0.5], step=4, norm=math.inf) == "skip"
    assert skip.num_skipped == 1
    assert any("skipping the step" in r.getMessage() and "gradient" in r.getMessage() for r in caplog.records)


def test_loss_scaler_overflow_is_dropped_without_counting_as_a_skip():
    guard = _guard(policy="stop")
    guard.observe_loss(torch.tensor(0.5), ["k"])
    assert guard.settle(torch.tensor(math.inf), step=2, rank=0, scaler_overflow_ok=True) == "overflow"
    assert guard.num_skipped == 0
    guard.observe_loss(torch.tensor(math.nan), ["k"])  # a non-finite loss stays an error under loss scaling
    with pytest.raises(NonFiniteError, match="non-finite loss"):
        guard.settle(torch.tensor(math.inf), step=3, rank=0, scaler_overflow_ok=True)


def test_one_non_finite_micro_batch_skips_the_whole_window_and_the_window_restarts():
    guard = _guard(policy="skip")
    assert _step(guard, [0.5, math.nan, 0.25], step=1) == "skip"  # the last micro-batch was finite: still skipped
    assert _step(guard, [0.5, 0.25], step=2) == "apply"  # the next window starts clean
    assert guard.num_skipped == 1


def test_skip_policy_skips_until_max_skips_within_the_window():
    guard = _guard(policy="skip", max_skips=2, skip_window_steps=10)
    assert _step(guard, [math.nan], step=1) == "skip"
    assert _step(guard, [1.0], step=2) == "apply"
    assert _step(guard, [math.nan], step=3) == "skip"
    assert guard.num_skipped == 2
    with pytest.raises(NonFiniteError, match=r"3 steps skipped within 10 steps.*max_skips = 2"):
        _step(guard, [math.nan], step=10)  # steps 1, 3 and 10 lie within 10 steps


def test_skips_outside_the_window_are_forgotten():
    guard = _guard(policy="skip", max_skips=2, skip_window_steps=10)
    for step in (0, 5, 10):  # step 0 is 10 steps back at step 10: forgotten
        assert _step(guard, [math.nan], step=step) == "skip"
    assert guard.num_skipped == 3
    with pytest.raises(NonFiniteError, match="max_skips"):
        _step(guard, [math.nan], step=14)  # 5, 10, 14


def test_loss_spike_warns_once_the_window_is_full(caplog):
    caplog.set_level(logging.WARNING, logger=NUMERICS_LOGGER)
    guard = _guard(spike_factor=10.0, spike_window_steps=4)
    for step, value in enumerate([1.0, 50.0, 2.0, 1.5]):  # warm-up: a large value does not warn yet
        _step(guard, [value], step=step)
    assert not caplog.records
    _step(guard, [300.0, 500.0], step=4)  # the step's mean, 400 <= 10 x max(50, 2, 1.5, 1): normal
    assert not caplog.records
    _step(guard, [4001.0], step=5)  # > 10 x 400
    spikes = [r for r in caplog.records if "loss spike" in r.getMessage()]
    assert len(spikes) == 1 and spikes[0].levelno == logging.WARNING and "step 5" in spikes[0].getMessage()
    caplog.clear()
    for step in range(6, 12):  # losses back to normal, the spike leaves the window: no more warnings
        _step(guard, [3.0], step=step)
    assert not caplog.records


def test_guard_state_round_trips_through_a_weights_only_checkpoint(caplog):
    config = NumericsConfig(policy="skip", max_skips=2, skip_window_steps=100, spike_window_steps=3)
    guard = NumericsGuard(config)
    for step, value in enumerate([1.0, 2.0, 3.0, math.nan, math.nan]):
        _step(guard, [value], step=step)
    buffer = io.BytesIO()
    torch.save(guard.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # the system's checkpoints are loaded weights_only

    restored = NumericsGuard(config)  # with state of its own, which the load replaces
    _step(restored, [0.5], step=0)
    _step(restored, [math.nan], step=1)
    restored.load_state_dict(state)
    assert restored.state_dict() == guard.state_dict()
    assert restored.num_skipped == 2
    caplog.set_level(logging.WARNING, logger=NUMERICS_LOGGER)
    _step(restored, [31.0], step=5)  # the restored window is full: warns
    assert any("loss spike" in r.getMessage() for r in caplog.records)
    with pytest.raises(NonFiniteError, match="max_skips"):  # the restored skips count
        _step(restored, [math.nan], step=6)


def test_invalid_policy_names_the_key():
    with pytest.raises(ValueError, match=r"model\.numerics\.policy"):
        NumericsConfig(policy="ignore")


def test_a_step_reads_the_device_once_whatever_the_number_of_micro_batches():
    weight = torch.ones(3, requires_grad=True)  # existed before counting: "on the device"
    guard = _guard()
    with HostSyncCounter() as counter:
        for i in range(4):
            loss = (weight * (i + 1)).sum()  # computed from the device: reading it would be a sync
            guard.observe_loss(loss, [f"k{i}"])
        norm = torch.linalg.vector_norm(weight.detach())
        assert guard.settle(norm, step=0, rank=0) == "apply"
    assert [e.kind for e in counter.events] == ["tolist"], counter.by_site()


# --------------------------------------------------------------------------------------------- two ranks
def _two_rank_worker(rank: int, init_file: str, out_dir: str) -> None:
    """One of two gloo ranks: rank 1 alone sees a NaN loss; records what the guard did (``rank<r>.json``)."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2, timeout=timedelta(seconds=60)
    )
    try:
        keys = [f"sample-of-rank{rank}"]
        results: dict[str, object] = {}
        for policy in ("stop", "skip"):
            for what, loss, norm in (("loss", math.nan if rank == 1 else 1.0, 2.0), ("gradient", 1.0, math.nan)):
                guard = NumericsGuard(NumericsConfig(policy=policy))
                guard.observe_loss(torch.tensor(loss), keys)
                try:  # the norm is global: the same on both ranks, as the strategies give it
                    results[f"{policy}/{what}"] = {"returned": guard.settle(torch.tensor(norm), step=5, rank=rank)}
                except NonFiniteError as error:
                    results[f"{policy}/{what}"] = {"raised": str(error)}
        guard = NumericsGuard(NumericsConfig())
        guard.observe_loss(torch.tensor(1.0 + 2 * rank), keys)  # rank 0: 1, rank 1: 3
        results["finite"] = guard.settle(FINITE_NORM, step=6, rank=rank)
        results["spike_window"] = list(guard.recent_losses)
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_ranks_agree_when_only_one_rank_is_non_finite(tmp_path, monkeypatch):
    # The spawned ranks import this module by name: put the folder it is importable from on their sys.path.
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[__name__.count(".")]))
    mp.spawn(_two_rank_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank, result in enumerate(results):
        message = result["stop/loss"]["raised"]  # rank 0's own loss was finite: it stops too
        assert "non-finite loss at step 5 on rank(s) [1]" in message
        assert f"this is rank {rank}" in message and f"sample-of-rank{rank}" in message
        assert "non-finite gradient at step 5" in result["stop/gradient"]["raised"]
        assert result["skip/loss"] == result["skip/gradient"] == {"returned": "skip"}
        assert result["finite"] == "apply"
        assert result["spike_window"] == [2.0]  # the mean over both ranks: the same state on every rank


# --------------------------------------------------------------------------------------------- the real step
def _snapshot(pl_module, trainer) -> dict:
    """Copies of the parameters, the AdamW state, the learning rates and the step flags."""
    optimizer = trainer.optimizers[0]
    names = {id(p): n for n, p in pl_module.denoiser.named_parameters()}
    return {
        "params": {n: p.detach().clone() for n, p in pl_module.denoiser.named_parameters()},
        "state": {
            names[id(p)]: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
            for p, s in optimizer.state.items()
        },
        "lr": [g["lr"] for g in optimizer.param_groups],
        "scheduler_steps": trainer.lr_scheduler_configs[0].scheduler.last_epoch,
        "step_skipped": pl_module.step_skipped,
    }


def _assert_unchanged(before: dict, after: dict) -> None:
    assert after["params"].keys() == before["params"].keys() and after["state"].keys() == before["state"].keys()
    assert all(torch.equal(after["params"][n], p) for n, p in before["params"].items()), "parameters changed"
    for name, values in before["state"].items():
        assert after["state"][name].keys() == values.keys()
        assert all(torch.equal(after["state"][name][k], v) for k, v in values.items()), f"AdamW state of {name}"
    assert after["lr"] == before["lr"] and after["scheduler_steps"] == before["scheduler_steps"], "LR schedule moved"


def _recorder():
    """A callback keeping snapshots before each optimizer step's first batch and after its last one
    (``snapshots["before<step>"]``, ``snapshots["after<step>"]``)."""
    from lightning.pytorch import Callback

    class Recorder(Callback):
        def __init__(self):
            self.snapshots: dict[str, dict] = {}

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.snapshots.setdefault(f"before{trainer.global_step}", _snapshot(pl_module, trainer))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.snapshots[f"after{trainer.global_step - 1}"] = _snapshot(pl_module, trainer)

    return Recorder()


def test_skipped_step_leaves_parameters_optimizer_state_and_lr_schedule_unchanged(tmp_path):
    """A real (tiny recipe) fit under policy skip: a NaN gradient at step 1 drops that step, and only that step."""
    from lightning.pytorch import Callback
    from support.fit_in_process import fit_tiny

    class InjectNaNGradient(Callback):
        poisoned = False

        def on_after_backward(self, trainer, pl_module):  # inside the optimizer closure, before the norm
            if trainer.global_step == 1:
                param = next(p for p in pl_module.denoiser.parameters() if p.grad is not None)
                param.grad.view(-1)[0] = math.nan
                self.poisoned = True

    recorder, injector = _recorder(), InjectNaNGradient()
    cli = fit_tiny(tmp_path, 3, ["--model.numerics.policy", "skip"], [injector, recorder])
    shots = recorder.snapshots
    assert cli.trainer.global_step == 3 and injector.poisoned  # the skipped step still counts as a global step
    assert cli.model.numerics.num_skipped == 1
    assert [shots[f"after{s}"]["step_skipped"] for s in range(3)] == [False, True, False]
    assert any(not torch.equal(shots["after0"]["params"][n], p) for n, p in shots["before0"]["params"].items())
    assert shots["after0"]["state"] and not shots["before0"]["state"]  # step 0 is a real step: AdamW state appears
    _assert_unchanged(shots["before1"], shots["after1"])
    assert shots["after2"]["scheduler_steps"] == shots["after0"]["scheduler_steps"] + 1  # step 2 advances it again


def test_a_non_finite_micro_batch_skips_its_whole_accumulation_window(tmp_path):
    """Two micro-batches per step; the first micro-batch of step 1 has a NaN loss, the second a finite one: the whole
    step is dropped (the window's flag is not overwritten by the next micro-batch), and step 2 trains again."""
    from lightning.pytorch import Callback
    from support.fit_in_process import fit_tiny

    class NaNLatents(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 2:  # the first micro-batch of optimizer step 1
                batch.latent_mean.fill_(math.nan)

    recorder = _recorder()
    cli = fit_tiny(
        tmp_path,
        3,
        ["--model.numerics.policy", "skip", "--trainer.accumulate_grad_batches", "2"],
        [NaNLatents(), recorder],
    )
    shots = recorder.snapshots
    assert cli.trainer.global_step == 3 and cli.model.numerics.num_skipped == 1
    assert [shots[f"after{s}"]["step_skipped"] for s in range(3)] == [False, True, False]
    _assert_unchanged(shots["before1"], shots["after1"])
    assert any(not torch.equal(shots["after2"]["params"][n], p) for n, p in shots["before2"]["params"].items())
