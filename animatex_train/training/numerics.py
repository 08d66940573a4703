"""Non-finite loss / gradient guard and loss-spike warning, identical on every rank.

The loss is checked before backward and the gradients before the optimizer step; the flag is
all-reduced (MIN of "finite") so every rank takes the same action (RELIABILITY.md section 4):

* ``stop`` (default): raise ``NonFiniteError`` naming the rank(s), the step and the sample keys;
* ``skip``: drop the step on every rank (no parameter or optimizer-state update) and go on, until
  ``max_skips`` skips happened within ``skip_window_steps`` steps, then stop. Not available under
  DeepSpeed, whose engine cannot skip a step it has started (a clear error at start-up says so).

A loss above ``spike_factor`` x the running maximum of the last ``spike_window_steps`` steps is reported
(once the window is full) as a warning; it does not change training.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
    """A non-finite loss or gradient; the message names where and on which samples."""


class SkipStep(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised inside the optimizer closure to abandon a step before the optimizer touches anything."""


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


def _all_finite(flag: bool, device: torch.device) -> tuple[bool, list[int]]:
    """(every rank finite?, ranks that are not) with one all-gather."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag, ([] if flag else [0])
    backend_device = device if dist.get_backend() == "nccl" else torch.device("cpu")
    flags = [torch.zeros(1, device=backend_device) for _ in range(dist.get_world_size())]
    dist.all_gather(flags, torch.tensor([float(flag)], device=backend_device))
    bad = [rank for rank, f in enumerate(flags) if f.item() == 0.0]
    return not bad, bad


class NumericsGuard:
    """Stateful checks used by the system's step (one instance per process)."""

    def __init__(self, config: NumericsConfig):
        self.config = config
        self.recent_losses: deque[float] = deque(maxlen=config.spike_window_steps)
        self.skipped_steps: deque[int] = deque()
        self.num_skipped = 0

    def check_loss(self, loss: torch.Tensor, step: int, rank: int, keys: list[str]) -> bool:
        """True if the step may go on; False to skip it (``skip`` policy); raises under ``stop``."""
        finite, bad_ranks = _all_finite(bool(torch.isfinite(loss.detach()).all()), loss.device)
        if finite:
            self._watch_spike(float(loss.detach()), step)
            return True
        return self._non_finite("loss", step, rank, bad_ranks, keys)

    def check_gradients(self, parameters, step: int, rank: int, keys: list[str]) -> bool:
        """Same for the gradients (call after backward, before the optimizer step)."""
        grads = [p.grad for p in parameters if p.grad is not None]
        local = all(bool(torch.isfinite(g).all()) for g in grads)
        device = grads[0].device if grads else torch.device("cpu")
        finite, bad_ranks = _all_finite(local, device)
        return True if finite else self._non_finite("gradient", step, rank, bad_ranks, keys)

    def _non_finite(self, what: str, step: int, rank: int, bad_ranks: list[int], keys: list[str]) -> bool:
        message = f"non-finite {what} at step {step} on rank(s) {bad_ranks} (this is rank {rank}; its samples: {keys})"
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
        return False

    def _watch_spike(self, value: float, step: int) -> None:
        window = self.recent_losses
        if len(window) == window.maxlen and value > self.config.spike_factor * max(window):
            log.warning("loss spike at step %d: %.4g > %g x the maximum %.4g of the last %d steps", step, value,
                        self.config.spike_factor, max(window), len(window))  # fmt: skip
        window.append(value)

    def state_dict(self) -> dict:
        return {"recent_losses": list(self.recent_losses), "skipped_steps": list(self.skipped_steps),
                "num_skipped": self.num_skipped}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.recent_losses.clear()  # replace (not add to) whatever this guard saw before
        self.skipped_steps.clear()
        self.recent_losses.extend(state.get("recent_losses", []))
        self.skipped_steps.extend(state.get("skipped_steps", []))
        self.num_skipped = int(state.get("num_skipped", 0))
