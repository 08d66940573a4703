"""Preemption (docs/reliability.md §4): a signal -> one checkpoint at the next step boundary -> one
``scontrol requeue`` -> every rank exits; the rerun resumes from that checkpoint.

The 2-rank runs are started the way ``srun`` starts them (``SLURM_PROCID``, ``SLURM_NTASKS``, ...), with a fake
``scontrol`` first on ``PATH`` that records its arguments. ``tests/slurm/`` runs the same flow on a real Slurm.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

import pytest
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies import DDPStrategy
from slurm.harness import (
    RankGroup,
    fit_args,
    offline_runs,
    probe_events,
    probe_steps,
    run_env,
    scontrol_calls,
    tiny_dataset,
    wait_for_step,
    write_fake_scontrol,
)

from animatex_train.cli.lightning import _without_lightning_requeue
from animatex_train.training.checkpoint import find_resume_checkpoint
from animatex_train.training.preemption import (
    PreemptionHandler,
    requeue_slurm_job,
    slurm_job_id,
    strategy_with_timeout,
)
from animatex_train.training.tracking import RUN_ID_FILE

MAX_STEPS = 16
EXIT_WITHIN_S = 60  # G5
SIGTERM_EXIT_WITHIN_S = 30  # F6: Slurm's KillWait after SIGTERM


def test_slurm_job_id_is_the_job_or_array_task_and_is_validated():
    assert slurm_job_id({"SLURM_JOB_ID": "12345"}) == "12345"
    array_task = {"SLURM_JOB_ID": "12347", "SLURM_ARRAY_JOB_ID": "12345", "SLURM_ARRAY_TASK_ID": "2"}
    assert slurm_job_id(array_task) == "12345_2"
    assert slurm_job_id({}) is None
    for bad in ("123; touch /tmp/x", "12a", "1 2", "-5", "123\n"):
        with pytest.raises(ValueError, match="not a job id"):
            slurm_job_id({"SLURM_JOB_ID": bad})


def test_requeue_calls_scontrol_with_an_argument_list(tmp_path):
    log = tmp_path / "calls.log"
    scontrol = write_fake_scontrol(tmp_path / "bin", log)
    assert requeue_slurm_job("12345_2", scontrol=str(scontrol))
    assert scontrol_calls(log) == [["requeue", "12345_2"]]
    failing = tmp_path / "failing-scontrol"
    failing.write_text("#!/bin/sh\necho 'Requested operation is presently disabled' >&2\nexit 1\n")
    failing.chmod(0o755)
    assert not requeue_slurm_job("12345", scontrol=str(failing))
    assert not requeue_slurm_job("12345", scontrol=str(tmp_path / "does-not-exist"))
    with pytest.raises(ValueError):
        requeue_slurm_job("12345 && reboot", scontrol=str(scontrol))
    assert len(scontrol_calls(log)) == 1


def test_handler_rejects_bad_settings():
    with pytest.raises(ValueError, match="unknown signal"):
        PreemptionHandler(requeue_signals=["SIGNOPE"])
    with pytest.raises(ValueError, match="both requeue and stop"):
        PreemptionHandler(requeue_signals=["USR1"], stop_signals=["SIGUSR1"])
    with pytest.raises(ValueError, match="exit_code"):
        PreemptionHandler(exit_code=300)


def test_signal_only_sets_a_flag_while_armed_and_keeps_its_old_meaning_afterwards():
    class Stub:  # the handler's setup needs no more of a trainer than this
        pass

    seen = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    try:
        handler = PreemptionHandler()
        handler.setup(Stub(), None, "fit")
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.01)
        assert handler._received == {signal.SIGUSR1} and seen == []  # recorded, nothing else happened
        handler.teardown(Stub(), None, "fit")
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.01)
        assert seen == [signal.SIGUSR1]  # after the fit: the handler from before it
    finally:
        signal.signal(signal.SIGUSR1, previous)
        signal.signal(signal.SIGTERM, handler._previous.get(signal.SIGTERM, signal.SIG_DFL))


def test_named_strategies_get_the_process_group_timeout():
    ddp = strategy_with_timeout("ddp", 120, multi_process=True)
    assert isinstance(ddp, DDPStrategy) and ddp._timeout == timedelta(seconds=120)
    assert isinstance(strategy_with_timeout("auto", 120, multi_process=True), DDPStrategy)
    assert strategy_with_timeout("auto", 120, multi_process=False) == "auto"
    spawn = strategy_with_timeout("ddp_spawn", 60, multi_process=True)
    assert spawn._start_method == "spawn" and spawn._timeout == timedelta(seconds=60)
    mine = DDPStrategy(timeout=timedelta(seconds=5))
    assert strategy_with_timeout(mine, 120, multi_process=True) is mine  # an instance keeps its own


def test_lightning_auto_requeue_is_off_under_slurm(monkeypatch):
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    assert _without_lightning_requeue(None) is None  # not under Slurm: untouched
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    (plugin,) = _without_lightning_requeue(None)
    assert isinstance(plugin, SLURMEnvironment) and plugin.auto_requeue is False
    given = SLURMEnvironment()
    assert _without_lightning_requeue([given]) == [given] and given.auto_requeue is False


def _signal_and_wait(group: RankGroup, pids: list[int], signum: int, within_s: float) -> tuple[list[int], float]:
    for pid in pids:
        os.kill(pid, signum)
    start = time.monotonic()
    codes = group.wait(timeout=within_s)
    return codes, time.monotonic() - start


def _check_one_save(run_dir, saves_before: int, signalled_at: int) -> int:
    """Exactly one new checkpoint (both ranks), at the step boundary after the signal; returns its step."""
    saves = [s for rank in (0, 1) for s in probe_events(run_dir, "save", rank)[saves_before:]]
    assert len(saves) == 2 and len({s["step"] for s in saves}) == 1, saves
    step = saves[0]["step"]
    for save in saves:  # at a step boundary: not inside the signal handler, no backward in flight
        assert not save["in_signal_handler"] and not save["in_backward"], save
        assert save["stack"][0] == "on_train_batch_end", save
    assert signalled_at <= step <= signalled_at + 2 < MAX_STEPS
    assert [max(probe_steps(run_dir, r)) for r in (0, 1)] == [step, step]  # no step ran after the save
    assert find_resume_checkpoint(run_dir / "checkpoints").parent.name == f"step-{step:09d}"
    return step


@pytest.mark.slow
def test_preempted_ranks_checkpoint_requeue_once_exit_and_the_rerun_resumes(tmp_path):
    manifest = tiny_dataset(tmp_path / "data")
    run_dir, log = tmp_path / "run", tmp_path / "scontrol.log"
    write_fake_scontrol(tmp_path / "bin", log)
    args = fit_args(manifest, run_dir, MAX_STEPS)
    path = f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"
    groups = []
    try:
        # 1. SIGUSR1 to every rank of job 12345.
        group = RankGroup(args, tmp_path / "logs1", run_env(PATH=path, SLURM_JOB_ID="12345"))
        groups.append(group)
        seen = wait_for_step(run_dir, ranks=2, step=2, group=group)
        codes, took = _signal_and_wait(group, group.pids, signal.SIGUSR1, EXIT_WITHIN_S)
        assert codes == [138, 138] and took < EXIT_WITHIN_S, group.output(0)[-3000:]
        assert scontrol_calls(log) == [["requeue", "12345"]]
        first = _check_one_save(run_dir, 0, seen)
        run_id = (run_dir / RUN_ID_FILE).read_text().strip()

        # 2. The rerun resumes from it; array task 12345_2; SIGUSR1 to rank 0 only.
        env = run_env(PATH=path, SLURM_JOB_ID="12347", SLURM_ARRAY_JOB_ID="12345", SLURM_ARRAY_TASK_ID="2")
        group = RankGroup(args, tmp_path / "logs2", env)
        groups.append(group)
        seen = wait_for_step(run_dir, ranks=2, step=first + 2, group=group)
        assert [e["step"] for e in probe_events(run_dir, "start")] == [0, first, 0, first]
        codes, took = _signal_and_wait(group, group.pids[:1], signal.SIGUSR1, EXIT_WITHIN_S)
        assert codes == [138, 138] and took < EXIT_WITHIN_S, group.output(0)[-3000:]
        assert scontrol_calls(log) == [["requeue", "12345"], ["requeue", "12345_2"]]
        second = _check_one_save(run_dir, 1, seen)

        # 3. SIGTERM (scancel) to rank 1 only: checkpoint and exit 143, no requeue.
        group = RankGroup(args, tmp_path / "logs3", run_env(PATH=path, SLURM_JOB_ID="12348"))
        groups.append(group)
        seen = wait_for_step(run_dir, ranks=2, step=second + 2, group=group)
        codes, took = _signal_and_wait(group, group.pids[1:], signal.SIGTERM, SIGTERM_EXIT_WITHIN_S)
        assert codes == [143, 143] and took < SIGTERM_EXIT_WITHIN_S, group.output(1)[-3000:]
        assert len(scontrol_calls(log)) == 2
        third = _check_one_save(run_dir, 2, seen)

        # 4. The last rerun finishes; one W&B run throughout.
        group = RankGroup(args, tmp_path / "logs4", run_env(PATH=path, SLURM_JOB_ID="12349"))
        groups.append(group)
        assert group.wait(timeout=180) == [0, 0], group.output(0)[-3000:]
        assert sorted(e["step"] for e in probe_events(run_dir, "start")) == sorted(
            [0, 0, first, first, second, second, third, third]
        )
        assert find_resume_checkpoint(run_dir / "checkpoints").parent.name == f"step-{MAX_STEPS:09d}"
        assert len(scontrol_calls(log)) == 2
        assert (run_dir / RUN_ID_FILE).read_text().strip() == run_id
        assert [p.name for p in offline_runs(run_dir)] == [f"run-{run_id}.wandb"] * 4
    finally:
        for group in groups:
            group.kill()
