"""Non-finite loss / gradient guard and loss-spike warning: one decision per optimizer step, the same on every rank.

How it is checked (docs/reliability.md §4), with one host sync per optimizer step:

1. Each micro-batch's loss is added to this rank's window on the device (``observe_loss``): a count of non-finite
   losses and the sum of the finite ones. Nothing is read on the host, and the loss is backpropagated as it is: a
   non-finite loss makes non-finite gradients, which the step then drops or stops on.
2. At the optimizer step (``settle``), after backward and before the update, one small all-gather collects every
   rank's window, and one read brings it to the host together with the global gradient norm
   (``training/grad_norm.py``: DDP/single device ``get_total_norm``, FSDP ``clip_grad_norm_``, DeepSpeed the
   engine's own norm). The norm is already global (all-reduced), so every rank sees the same value and decides
   alike; the gathered windows name the rank(s) whose loss was not finite, and give the loss for the spike warning.
3. The decision: a non-finite loss on any rank, or a non-finite global gradient norm, is a non-finite step.

Policies for a non-finite step:

* ``stop`` (default): raise ``NonFiniteError`` on every rank, naming the step, the rank(s) with a non-finite loss
  (or the gradient norm), and this rank's samples;
* ``skip``: drop the step on every rank and go on, until ``max_skips`` skips happened within
  ``skip_window_steps`` steps, then stop. Not available under DeepSpeed (a clear error at start-up says so): the
  engine's norm is only known after its step, and a non-finite loss with finite gradients would already have
  been applied; under ``stop`` the guard raises right after the engine's step (which itself drops an update whose
  norm is not finite).

What "skip" means (the system implements it):

* the update never runs: parameters and optimizer state are untouched, the step's gradients are dropped;
* the LR scheduler does not advance (``AnimateXSystem.lr_scheduler_step``): the schedule counts applied updates;
* the EMA does not count it: ``AnimateXSystem.step_skipped`` is True until the next optimizer step;
* with gradient accumulation the whole window goes: a non-finite loss in any micro-batch of the window, on any
  rank, skips the optimizer step (the window restarts after every optimizer step, skipped or not);
* ``trainer.global_step`` still advances (Lightning counts optimizer-step calls): the window's batches were
  consumed, and the data position, the per-sample seeds, checkpoint names and ``max_steps`` all count global
  steps, so a resumed run stays exact.

With fp16 loss scaling a non-finite gradient norm (all losses finite) is the scaler's overflow: the scaler drops
the update and lowers its scale; the step counts as skipped, but not against ``max_skips``.

A loss (the mean over ranks and micro-batches of a step) above ``spike_factor`` x the running maximum of the last
``spike_window_steps`` steps is reported, once the window is full, as a warning; it does not change training.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
Verdict = Literal["apply", "skip", "overflow"]  # see NumericsGuard.settle


class NonFiniteError(FloatingPointError):
    """A non-finite loss or gradient; the message names where and on which samples."""


class SkipStep(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised between backward and the update to abandon a step before the optimizer touches anything."""


@dataclass
class NumericsConfig:
    """Attributes:
    policy: ``stop`` or ``skip`` (see the module docstring).
    max_skips: with ``skip``: stop after this many skipped steps within ``skip_window_steps``.
    skip_window_steps: the window of ``max_skips``.
    spike_factor: warn when the loss exceeds this multiple of the recent maximum.
    spike_window_steps: steps in the running maximum (and the warm-up before warnings).
    """

    policy: str = "stop"
    max_skips: int = 3
    skip_window_steps: int = 100
    spike_factor: float = 10.0
    spike_window_steps: int = 100

    def __post_init__(self) -> None:
        if self.policy not in ("stop", "skip"):
            raise ValueError(f"model.numerics.policy must be stop or skip, got {self.policy!r}")


def _gather_rows(local: torch.Tensor) -> torch.Tensor:
    """``(world, k)``: every rank's ``(k,)`` row, with one all-gather (none on one process); no host sync on NCCL."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local[None]
    if dist.get_backend() != "nccl":
        local = local.cpu()  # gloo gathers host tensors (CPU runs: a no-op)
    rows = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(rows, local)
    return torch.stack(rows)


class NumericsGuard:
    """Stateful checks used by the system's step (one instance per process)."""

    def __init__(self, config: NumericsConfig):
        self.config = config
        self.recent_losses: deque[float] = deque(maxlen=config.spike_window_steps)
        self.skipped_steps: deque[int] = deque()
        self.num_skipped = 0
        self._window: torch.Tensor | None = None  # (non-finite losses, sum of finite losses, micro-batches)
        self._window_keys: list[str] = []

    def observe_loss(self, loss: torch.Tensor, keys: list[str]) -> None:
        """Add one micro-batch's loss (a 0-dim tensor) to this rank's window; no host sync."""
        loss = loss.detach().float()
        finite = torch.isfinite(loss)
        row = torch.stack([(~finite).float(), torch.where(finite, loss, 0.0), torch.ones_like(loss)])
        self._window = row if self._window is None else self._window + row
        self._window_keys.extend(keys)

    def settle(
        self,
        grad_norm: torch.Tensor | float | None,
        step: int,
        rank: int,
        scaler_overflow_ok: bool = False,
    ) -> Verdict:
        """Decide the optimizer step from the window of every rank and the global gradient norm; resets the window.

        Every rank must call it (it gathers). One host sync: the gathered windows and the norm are read together.

        Args:
            grad_norm: the global L2 gradient norm (the same on every rank); None if unknown (loss check only).
            step: the global step, for messages and the skip window.
            rank: this rank, for messages.
            scaler_overflow_ok: a loss scaler is active: a non-finite norm with finite losses is its overflow
                (skipped by the scaler), not an error.

        Returns:
            ``apply``: the update may run; ``skip``: drop it (policy ``skip``); ``overflow``: the loss scaler drops it.

        Raises:
            NonFiniteError: under ``stop`` (or past ``max_skips``) when the step is not finite.
        """
        device = grad_norm.device if isinstance(grad_norm, torch.Tensor) else None
        window = self._window if self._window is not None else torch.zeros(3, device=device)
        keys, self._window, self._window_keys = self._window_keys, None, []
        rows = _gather_rows(window)
        values = rows.flatten()
        if isinstance(grad_norm, torch.Tensor):
            values = torch.cat([values, grad_norm.detach().reshape(1).float().to(values.device)])
        values = values.tolist()  # the one host sync of the step
        if isinstance(grad_norm, torch.Tensor):
            grad_norm = values.pop()
        per_rank = [values[i : i + 3] for i in range(0, len(values), 3)]
        bad_ranks = [r for r, (non_finite, _, _) in enumerate(per_rank) if non_finite > 0]
        if bad_ranks:
            where = f"non-finite loss at step {step} on rank(s) {bad_ranks}"
            return self._non_finite(where, step, rank, keys)
        if grad_norm is not None and not math.isfinite(grad_norm):
            if scaler_overflow_ok:
                log.info("step %d: gradients overflowed under loss scaling; the scaler skips the update", step)
                return "overflow"
            where = f"non-finite gradient at step {step} (global gradient norm {grad_norm}; every rank's loss finite)"
            return self._non_finite(where, step, rank, keys)
        count = sum(n for _, _, n in per_rank)
        if count:
            self._watch_spike(sum(total for _, total, _ in per_rank) / count, step)
        return "apply"

    def _non_finite(self, where: str, step: int, rank: int, keys: list[str]) -> Verdict:
        message = f"{where} (this is rank {rank}; its samples: {keys})"
        if self.config.policy == "stop":
            raise NonFiniteError(message + "; set model.numerics.policy: skip to skip such steps")
        self.skipped_steps.append(step)
        while self.skipped_steps and self.skipped_steps[0] <= step - self.config.skip_window_steps:
            self.skipped_steps.popleft()
        self.num_skipped += 1
        if len(self.skipped_steps) > self.config.max_skips:
            raise NonFiniteError(
                f"{message}; {len(self.skipped_steps)} steps skipped within {self.config.skip_window_steps} steps "
                f"(model.numerics.max_skips = {self.config.max_skips}): stopping"
            )
        log.warning("skipping the step: %s", message)
        return "skip"

    def _watch_spike(self, value: float, step: int) -> None:
        window = self.recent_losses
        if len(window) == window.maxlen and value > self.config.spike_factor * max(window):
            log.warning(
                "loss spike at step %d: %.4g > %g x the maximum %.4g of the last %d steps",
                step,
                value,
                self.config.spike_factor,
                max(window),
                len(window),
            )
        window.append(value)

    def state_dict(self) -> dict:
        return {
            "recent_losses": list(self.recent_losses),
            "skipped_steps": list(self.skipped_steps),
            "num_skipped": self.num_skipped,
        }

    def load_state_dict(self, state: dict) -> None:
        self.recent_losses.clear()  # replace (not add to) whatever this guard saw before
        self.skipped_steps.clear()
        self.recent_losses.extend(state.get("recent_losses", []))
        self.skipped_steps.extend(state.get("skipped_steps", []))
        self.num_skipped = int(state.get("num_skipped", 0))
