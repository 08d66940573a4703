"""Preemption: a signal becomes a checkpoint, a Slurm requeue and a clean exit at the next step boundary.

Protocol (docs/reliability.md §4, the Megatron pattern):

1. The signal handler only records which signal arrived. Slurm sends ``SIGUSR1`` ahead of the time limit
   (``#SBATCH --signal=USR1@<lead>``); ``scancel``, a time limit and node shutdowns send ``SIGTERM``.
2. After every optimizer step every rank all-reduces (MAX) its record, so a signal seen by any one rank
   is acted on by all of them at the same step.
3. Every rank saves through ``CrashSafeCheckpoint.save`` (the crash-safe commit), then the fit stops by
   raising ``Preempted`` (a ``SystemExit``, as Lightning's own ``SIGTERMException``), which skips the
   validation Lightning would run for ``trainer.should_stop`` and spend the signal's lead time on.
4. While the exception unwinds (``on_exception``), the loggers are finalized (W&B marks the run as
   preempting and flushes it), then rank 0 runs ``scontrol requeue <job>`` (argv, no shell, id checked
   with ``re.fullmatch``) for a requeue signal under Slurm, and all ranks meet at a barrier so that no
   rank exits (``srun --kill-on-bad-exit`` would kill the others) before the requeue is done.
5. The process exits with ``exit_code``; by default ``128 + signal`` (138 for SIGUSR1, 143 for SIGTERM),
   the shell convention for "stopped by this signal": never 0, so no wrapper mistakes the run for
   finished. Rerunning the same command (what the requeued job does) resumes from the checkpoint.

``SIGTERM`` alone checkpoints and exits but does not requeue: it is also what ``scancel`` sends, and a job
that requeues itself on ``scancel`` could never be cancelled. (Slurm requeues jobs it preempts itself
when ``PreemptMode=REQUEUE``.) Lightning's own requeue must stay off (``SLURMEnvironment(auto_requeue=False)``,
set by ``AnimateXCLI``); otherwise it would checkpoint and requeue from inside its signal handler as well.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import signal
import subprocess
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import StrategyRegistry

from animatex_train.training.checkpoint import CrashSafeCheckpoint
from animatex_train.training.strategy import DEFAULT_TIMEOUT_S

log = logging.getLogger(__name__)

_JOB_ID = re.compile(r"[0-9]+(_[0-9]+)?")
# Logger.finalize status passed when a run stops for preemption (tracking.py's logger acts on it).
PREEMPTED_STATUS = "preempted"


class Preempted(SystemExit):
    """Raised on every rank after the preemption checkpoint; its ``code`` is the process exit status."""

    def __init__(self, code: int, signum: int, requeue: bool):
        super().__init__(code)
        self.signum = signum
        self.requeue = requeue


def slurm_job_id(environ: dict[str, str] | os._Environ | None = None) -> str | None:
    """The id ``scontrol requeue`` needs: ``<array job>_<task>`` in an array, else the job id; None outside Slurm.

    Raises:
        ValueError: the Slurm variables hold something other than job ids (never passed to a command).
    """
    env = os.environ if environ is None else environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        job_id = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    else:
        job_id = env.get("SLURM_JOB_ID")
        if not job_id:
            return None
    if not _JOB_ID.fullmatch(job_id):
        raise ValueError(
            f"Slurm job id {job_id!r} (from SLURM_JOB_ID / SLURM_ARRAY_JOB_ID + SLURM_ARRAY_TASK_ID) is not a job id "
            "of digits or <digits>_<digits>; refusing to pass it to scontrol"
        )
    return job_id


def requeue_slurm_job(job_id: str, scontrol: str = "scontrol", timeout_s: float = 60.0) -> bool:
    """Run ``scontrol requeue <job_id>``; True on success. Failures are logged, not raised (the checkpoint is safe)."""
    if not _JOB_ID.fullmatch(job_id):
        raise ValueError(f"not a Slurm job id: {job_id!r}")
    argv = [scontrol, "requeue", job_id]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        log.error("could not requeue Slurm job %s (%s); resubmit the same job script to resume", job_id, error)
        return False
    if result.returncode != 0:
        log.error(
            "`%s` failed with exit code %d: %s; resubmit the same job script to resume (was it submitted "
            "with --requeue?)",
            " ".join(argv),
            result.returncode,
            result.stderr.strip(),
        )
        return False
    log.warning("requeued Slurm job %s; it resumes from the checkpoint when it restarts", job_id)
    return True


class PreemptionHandler(pl.Callback):
    """Checkpoint, requeue and exit on ``SIGUSR1`` / ``SIGTERM`` at the next optimizer-step boundary.

    Always safe to enable: outside Slurm a signal only checkpoints and stops the run (rerun to resume).

    Args:
        requeue_signals: signals meaning "checkpoint, requeue the Slurm job, exit" (Slurm's ``--signal``).
        stop_signals: signals meaning "checkpoint and exit" without requeueing (``scancel`` sends SIGTERM).
        exit_code: exit status after such a stop; None = 128 + the signal (138 SIGUSR1, 143 SIGTERM; 143 when
            both arrived).
        requeue: run ``scontrol requeue`` for a requeue signal when the process runs in a Slurm job.
        scontrol: the ``scontrol`` executable.
        requeue_timeout_s: how long ``scontrol`` may take.
    """

    def __init__(
        self,
        requeue_signals: list[str] | None = None,
        stop_signals: list[str] | None = None,
        exit_code: int | None = None,
        requeue: bool = True,
        scontrol: str = "scontrol",
        requeue_timeout_s: float = 60.0,
    ):
        self.requeue_signals = _parse_signals(["SIGUSR1"] if requeue_signals is None else requeue_signals, "requeue")
        self.stop_signals = _parse_signals(["SIGTERM"] if stop_signals is None else stop_signals, "stop")
        overlap = set(self.requeue_signals) & set(self.stop_signals)
        if overlap:
            raise ValueError(f"preemption: {sorted(s.name for s in overlap)} listed as both requeue and stop signal")
        if exit_code is not None and not 0 <= exit_code <= 255:
            raise ValueError(f"preemption.exit_code must be in 0..255 or null, got {exit_code}")
        self.exit_code = exit_code
        self.requeue = requeue
        self.scontrol = scontrol
        self.requeue_timeout_s = requeue_timeout_s
        # Stop signals first: the order decides which signal the exit code reports.
        self._signals: list[signal.Signals] = [*self.stop_signals, *self.requeue_signals]
        self._received: set[int] = set()
        self._previous: dict[int, Any] = {}
        self._owner_pid = -1
        self._armed = False
        self._last_checked_step = -1

    # ------------------------------------------------------------------ handlers
    def _on_signal(self, signum: int, frame) -> None:
        """Only record the signal: no I/O, no collective, no checkpoint here (the step boundary does that)."""
        if os.getpid() != self._owner_pid:
            return  # a forked DataLoader worker inherited the handler: the rank process acts, the worker ignores
        if self._armed:
            self._received.add(signum)
            return
        previous = self._previous.get(signum, signal.SIG_DFL)  # after the fit: the disposition from before it
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signum, previous)
            os.kill(os.getpid(), signum)

    def _install(self) -> None:
        for sig in self._signals:
            current = signal.getsignal(sig)
            if current != self._on_signal:
                self._previous.setdefault(int(sig), current)
                signal.signal(sig, self._on_signal)
            # Restart system calls the signal interrupts (SA_RESTART) instead of failing them with EINTR: the
            # signal may land on a gloo/NCCL or data-loading thread, whose blocking socket calls must carry on.
            signal.siginterrupt(sig, False)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._owner_pid, self._armed, self._received = os.getpid(), True, set()
        self._last_checked_step = -1
        self._install()  # before any DataLoader worker is forked, so workers inherit (and ignore) it
        # Lightning's SIGTERM notifier runs a collective (dist.broadcast) inside the signal handler, which can
        # deadlock against the collective the interrupted rank was in (docs/reliability.md §4); with our
        # handler in charge it must not run. It is (re)installed before fitting, after this hook.
        connector = getattr(trainer, "_signal_connector", None)
        if connector is not None and hasattr(connector, "_sigterm_notifier_fn"):
            connector._sigterm_notifier_fn = lambda signum, frame: None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install()  # Lightning registered its SIGTERM handler after `setup`: take the signals back

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._armed = False  # from now on a signal gets the disposition it had before the fit

    # ------------------------------------------------------------------ step boundary
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == self._last_checked_step:
            return  # no optimizer step since the last check (gradient accumulation, a skipped step)
        self._last_checked_step = step
        local = torch.tensor(
            [int(sig in self._received) for sig in self._signals],
            dtype=torch.int32,
            device=trainer.strategy.root_device,
        )
        agreed = trainer.strategy.reduce(local, reduce_op="max") if trainer.world_size > 1 else local
        received = [sig for sig, flag in zip(self._signals, agreed.tolist(), strict=True) if flag]
        if not received:
            return
        signum = int(received[0])
        # A requeue signal requeues even if a stop signal followed it: that is the time limit's SIGTERM arriving
        # before the step boundary after Slurm's SIGUSR1 lead. A stop signal alone (scancel) never requeues.
        requeue = any(sig in self.requeue_signals for sig in received)
        checkpoint = self._checkpoint_callback(trainer)
        committed = checkpoint.last_saved_step == step or checkpoint.save(trainer) is not None
        code = 128 + signum if self.exit_code is None else self.exit_code
        log.warning(
            "rank %d: %s received; checkpoint at step %d %s, stopping with exit code %d",
            trainer.global_rank,
            signal.Signals(signum).name,
            step,
            "committed" if committed else "NOT saved (the save failed; see above)",
            code,
        )
        self._armed = False
        raise Preempted(code, signum, requeue)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, Preempted):
            return
        for logger in trainer.loggers:
            logger.finalize(PREEMPTED_STATUS)  # flush (W&B: mark preempting) before the job is requeued and killed
        if trainer.is_global_zero and exception.requeue:
            self._requeue()
        trainer.strategy.barrier("preemption:requeued")

    def _requeue(self) -> None:
        try:
            job_id = slurm_job_id()
        except ValueError as error:
            log.error("not requeueing: %s", error)
            return
        if job_id is None:
            log.warning("not running under Slurm (no SLURM_JOB_ID): not requeueing; rerun the same command to resume")
        elif self.requeue:
            requeue_slurm_job(job_id, self.scontrol, self.requeue_timeout_s)

    @staticmethod
    def _checkpoint_callback(trainer: pl.Trainer) -> CrashSafeCheckpoint:
        for callback in trainer.callbacks:
            if isinstance(callback, CrashSafeCheckpoint):
                return callback
        raise RuntimeError(
            "PreemptionHandler needs a CrashSafeCheckpoint callback to save before stopping; add "
            "animatex_train.training.checkpoint.CrashSafeCheckpoint to trainer.callbacks (AnimateXCLI always does)"
        )


def _parse_signals(names: list[str], kind: str) -> list[signal.Signals]:
    out = []
    for name in names:
        key = name.upper() if name.upper().startswith("SIG") else "SIG" + name.upper()
        try:
            out.append(signal.Signals[key])
        except KeyError:
            raise ValueError(f"preemption.{kind}_signals: unknown signal {name!r} (e.g. SIGUSR1, SIGTERM)") from None
    return out


# ---------------------------------------------------------------------- process-group timeouts


@dataclass
class DistributedConfig:
    """The ``distributed:`` section of a recipe.

    Attributes:
        timeout_s: process-group timeout in seconds, for the initial rendezvous and for every collective.
            A dead node or a rank stuck longer than this fails the job (non-zero exit, Slurm frees the nodes)
            instead of hanging it until the time limit. 600 s (torch's NCCL default, under its 30 min gloo one)
            leaves room for rank 0 hashing a large checkpoint and rendering validation clips while the other
            ranks wait at the next collective. Applied to strategies given by name (``ddp``, ``deepspeed_stage_2``,
            ...; ``auto`` when several processes run); a strategy given as a class sets its own ``timeout``.
    """

    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError(f"distributed.timeout_s must be > 0 seconds, got {self.timeout_s}")


def strategy_with_timeout(strategy: Any, timeout_s: float, multi_process: bool) -> Any:
    """``strategy`` (a registered name or an instance) with the process-group ``timeout`` set when it takes one."""
    if not isinstance(strategy, str):
        return strategy  # an instance: its own ``timeout`` argument applies
    name = "ddp" if strategy == "auto" and multi_process else strategy
    if name not in StrategyRegistry:
        return strategy  # "auto" on one process, or a name Lightning resolves itself
    entry = StrategyRegistry[name]
    strategy_class = entry["strategy"]
    if "timeout" not in inspect.signature(strategy_class.__init__).parameters:
        return strategy
    return strategy_class(**{**entry["init_params"], "timeout": timedelta(seconds=timeout_s)})


def multi_process_run(devices: Any, num_nodes: Any, environ: dict[str, str] | os._Environ | None = None) -> bool:
    """Whether the run has several processes (``auto`` then means DDP): from the launcher's variables or the trainer."""
    env = os.environ if environ is None else environ
    for variable in ("SLURM_NTASKS", "WORLD_SIZE"):
        if env.get(variable, "1").isdigit() and int(env.get(variable, "1")) > 1:
            return True
    if isinstance(devices, str):
        devices = int(devices) if devices.isdigit() else [d for d in devices.split(",") if d.strip()]
    count = devices if isinstance(devices, int) else len(devices) if isinstance(devices, (list, tuple)) else 1
    return count > 1 or (isinstance(num_nodes, int) and num_nodes > 1)


class ElasticRestartError(RuntimeError):
    """``torchrun --max-restarts`` > 0: refused at start-up (see ``refuse_elastic_restarts``)."""


def refuse_elastic_restarts(environ: dict[str, str] | os._Environ | None = None) -> None:
    """Refuse torchrun's elastic restarts before anything starts.

    Measured (docs/reliability.md, probe D7, torch 2.13 / lightning 2.6): workers relaunched by torchrun after a failure
    hang in process-group initialisation or fail to reach the previous attempt's ports, so the run never resumes.
    The supported restart path is the Slurm requeue, or simply rerunning the command: every run resumes from the
    newest complete checkpoint of its run directory, at the exact data position.

    Raises:
        ElasticRestartError: torchrun set ``TORCHELASTIC_MAX_RESTARTS`` above 0.
    """
    environ = os.environ if environ is None else environ
    restarts = environ.get("TORCHELASTIC_MAX_RESTARTS", "0")
    if restarts.isdigit() and int(restarts) > 0:
        raise ElasticRestartError(
            f"torchrun --max-restarts={restarts} (TORCHELASTIC_MAX_RESTARTS) is not supported: restarted workers do "
            "not rejoin. Launch with --max-restarts=0 and restart by requeueing (slurm/train.sbatch, `animatex-train "
            "submit train`) or by rerunning the same command: it resumes from the newest complete checkpoint"
        )
