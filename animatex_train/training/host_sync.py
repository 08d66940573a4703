"""Count host syncs (points where the host waits for the accelerator), on any device, CPU included.

On CUDA the host waits for the queued GPU work at: a value read of a device tensor (``item``, ``bool``, ``float``,
``int``, ``tolist``, ``numpy``, printing), a copy to the host, a blocking copy from pageable host memory to the
device (``x.to(device)`` without ``non_blocking``, ``torch.tensor(data, device=...)``), an op whose output size
depends on device data (``nonzero``, boolean-mask indexing, ``unique``...) and an explicit ``synchronize``.
CUDA's own detector (``torch.cuda.set_sync_debug_mode``) needs a GPU; ``HostSyncCounter`` sees the same calls on
a CPU run, where they cost nothing, so CI can bound them (tests) and measure them (``benchmarks/host_syncs.py``).
It is a torch-function mode: every tensor call made on its thread while it is active passes through it.

Which tensors does a CPU run treat as "on the device"? The ones a GPU run would place there: tensors that existed
when counting started (parameters, the batch), tensors created with an explicit ``device`` or moved with
``.to(device)``, and everything computed from one of them. Tensors created without a device (the CPU default,
e.g. draws from a CPU generator) or with the literal ``"cpu"`` (code that means the host spells it so, e.g.
torch's optimizer step counters; code that means the training device passes a ``torch.device``), and everything
computed from those alone, live on the host; reading them is free.

Not seen: syncs inside C++ that calls no torch function from Python (e.g. inside DeepSpeed's ops), other threads,
and on a CPU run a move to ``torch.device("cpu")`` meant as a copy to the host (taken for the training device).
"""

from __future__ import annotations

import contextlib
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

_T = torch.Tensor
_READS = {
    _T.item,
    _T.tolist,
    _T.numpy,
    _T.__bool__,
    _T.__float__,
    _T.__int__,
    _T.__index__,
    _T.__complex__,
    _T.__format__,
    _T.__repr__,
    _T.__array__,
}
_DYNAMIC_SHAPE = {
    torch.nonzero,
    _T.nonzero,
    torch.argwhere,
    _T.argwhere,
    torch.masked_select,
    _T.masked_select,
    torch.unique,
    _T.unique,
    torch.unique_consecutive,
    _T.unique_consecutive,
    torch.bincount,
    _T.bincount,
}
_MASK_INDEXING = {_T.__getitem__, _T.__setitem__, _T.index_put_, _T.index_put}
_FACTORIES = {
    torch.tensor,
    torch.as_tensor,
    torch.zeros,
    torch.ones,
    torch.empty,
    torch.full,
    torch.rand,
    torch.randn,
    torch.randint,
    torch.randperm,
    torch.arange,
    torch.linspace,
    torch.logspace,
    torch.eye,
    torch.scalar_tensor,
    torch.from_numpy,
}
_FROM_HOST_DATA = {torch.tensor, torch.as_tensor}  # with a device: built on the host, then copied (blocking)
_HERE = str(Path(__file__).resolve())
_TORCH_DIR = str(Path(torch.__file__).resolve().parent)


@dataclass
class SyncEvent:
    """One host sync: what (``item``, ``host-to-device copy``, ...) and the first call site outside torch."""

    kind: str
    where: str

    @property
    def is_upload(self) -> bool:
        """A blocking copy to the device (the host waits for the queue, then copies); the others wait for a result."""
        return self.kind == "host-to-device copy" or self.kind.endswith("(data, device=...)")


class HostSyncCounter(TorchFunctionMode):
    """Records every host sync made on this thread while active (``with HostSyncCounter() as counter:``).

    ``counter.events`` lists them in order; ``counter.count`` is their number; ``counter.by_site()`` groups them.
    Setting ``recording`` to False (or ``with counter.pause():``) stops recording without losing track of which
    tensors live on the host.
    """

    def __init__(self) -> None:
        super().__init__()
        self.events: list[SyncEvent] = []
        self._host: WeakIdKeyDictionary = WeakIdKeyDictionary()  # tensors that live on the host (value unused)
        self.recording = True
        self._saved_sync = None

    @property
    def count(self) -> int:
        return len(self.events)

    def by_site(self) -> Counter[str]:
        """``"kind at file:line (function)"`` -> how many times."""
        return Counter(f"{e.kind} at {e.where}" for e in self.events)

    @contextlib.contextmanager
    def pause(self):
        """Stop recording events inside the block (tensors are still tracked)."""
        recording, self.recording = self.recording, False
        try:
            yield
        finally:
            self.recording = recording

    def __enter__(self) -> HostSyncCounter:
        # An explicit synchronize is no torch function: wrap the CUDA one while counting (a no-op on CPU runs).
        self._saved_sync = torch.cuda.synchronize
        original = self._saved_sync

        def synchronize(*args, **kwargs):
            self._record("synchronize")
            return original(*args, **kwargs)

        torch.cuda.synchronize = synchronize
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        torch.cuda.synchronize = self._saved_sync
        return super().__exit__(*exc)

    # ------------------------------------------------------------------ the mode
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = self._sync_kind(func, args, kwargs)
        if kind is not None:
            self._record(kind)
        out = func(*args, **kwargs)
        on_host = self._output_on_host(func, args, kwargs)
        for tensor in _tensors(out):
            if on_host:
                self._host[tensor] = True
            elif tensor in self._host:  # e.g. ``x.to(device)`` returns ``x`` itself on a CPU run
                del self._host[tensor]
        return out

    def _on_device(self, value: object) -> bool:
        return isinstance(value, torch.Tensor) and value not in self._host

    def _sync_kind(self, func, args: tuple, kwargs: dict) -> str | None:
        name = getattr(func, "__name__", str(func))
        if func in _READS:
            return name if self._on_device(args[0]) else None
        if func in _DYNAMIC_SHAPE:
            return name if self._on_device(args[0]) else None
        if func is torch.repeat_interleave or func is _T.repeat_interleave:
            repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
            return name if self._on_device(repeats) and kwargs.get("output_size") is None else None
        if func is torch.where and len(args) + len(kwargs) == 1:
            return "where(condition)" if self._on_device(args[0] if args else kwargs["condition"]) else None
        if func in _MASK_INDEXING:
            index = args[1] if len(args) > 1 else kwargs.get("indices")
            return (
                "boolean-mask indexing"
                if any(t.dtype == torch.bool and self._on_device(t) for t in _tensors(index))
                else None
            )
        if func is _T.cpu or (func is _T.to and _target_device(args[1:], kwargs) == "cpu"):
            return "device-to-host copy" if self._on_device(args[0]) else None
        if func in (_T.to, _T.cuda):
            if _target_device(args[1:], kwargs) is not None or func is _T.cuda:
                blocking = not kwargs.get("non_blocking", False)
                return "host-to-device copy" if blocking and args[0] in self._host else None
            return None
        if func is _T.copy_:
            dst, src = args[0], args[1] if len(args) > 1 else kwargs["src"]
            blocking = not (args[2] if len(args) > 2 else kwargs.get("non_blocking", False))
            if blocking and (dst in self._host) != (not self._on_device(src)):
                return "host-to-device copy" if dst not in self._host else "device-to-host copy"
            return None
        if func in _FROM_HOST_DATA and kwargs.get("device") not in (None, "cpu"):
            data = args[0] if args else kwargs.get("data")
            return (
                f"{name}(data, device=...)" if not (isinstance(data, torch.Tensor) and self._on_device(data)) else None
            )
        return None

    def _output_on_host(self, func, args: tuple, kwargs: dict) -> bool:
        if func in _FACTORIES:
            from_device = any(self._on_device(t) for t in _tensors((args, kwargs)))
            return kwargs.get("device") in (None, "cpu") and not from_device
        if func is _T.cpu or func is _T.pin_memory or (func is _T.to and _target_device(args[1:], kwargs) == "cpu"):
            return True
        if func in (_T.to, _T.cuda) and (_target_device(args[1:], kwargs) is not None or func is _T.cuda):
            return False  # moved to the (training) device
        inputs = list(_tensors((args, kwargs)))
        return bool(inputs) and all(t in self._host for t in inputs)

    def _record(self, kind: str) -> None:
        if self.recording:
            self.events.append(SyncEvent(kind, _call_site()))


def _target_device(args: tuple, kwargs: dict) -> object | None:
    """The device ``Tensor.to`` moves to, if it names one (positionally, ``device=`` or another tensor)."""
    if kwargs.get("device") is not None:
        return kwargs["device"]
    for value in args:
        if isinstance(value, (torch.device, str, int)) and not isinstance(value, bool):
            return value
        if isinstance(value, torch.Tensor):
            return value.device
    return None


def _tensors(value: object):
    """The tensors inside ``value`` (nested tuples, lists and dicts)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _call_site() -> str:
    """The innermost frame outside torch and this module, as ``path:line (function)`` (path shortened)."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        filename = str(Path(frame.filename).resolve())
        if filename != _HERE and not filename.startswith(_TORCH_DIR):
            parts = Path(filename).parts
            short = (
                "/".join(parts[-3:])
                if "site-packages" not in parts
                else "/".join(parts[parts.index("site-packages") + 1 :])
            )
            return f"{short}:{frame.lineno} ({frame.name})"
    return "?"


@dataclass
class StepSyncs:
    """The host syncs of one training batch (``StepSyncProbe``)."""

    batch_idx: int
    global_step: int  # the optimizer step this batch belongs to (before it completes)
    log_step: bool  # whether Lightning writes the logs after this batch (``log_every_n_steps``)
    events: list[SyncEvent]


class StepSyncProbe(pl.Callback):
    """Counts the host syncs of each training batch, from ``on_train_batch_start`` to ``on_train_batch_end``.

    That span is the system's step: forward, loss, backward, gradient norm and clipping, optimizer step and LR
    scheduler step, plus the batch hooks of the callbacks listed after this one at the start and before it at the
    end (put the probe first in ``trainer.callbacks`` to count the step alone). Lightning writes the logs after
    ``on_train_batch_end``; ``log_step`` marks the batches after which it does. The counter is active from
    ``on_train_start`` on (recording only inside the span), so it knows which tensors were created on the host
    across steps, e.g. the optimizer's step counters.
    """

    def __init__(self) -> None:
        self.steps: list[StepSyncs] = []
        self._counter: HostSyncCounter | None = None
        self._start = 0
        self._log_step = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._counter = HostSyncCounter().__enter__()
        self._counter.recording = False

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self._log_step = trainer._logger_connector.should_update_logs  # Lightning's own test, read before the step
        if self._counter is not None:
            self._start, self._counter.recording = self._counter.count, True

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if self._counter is None:
            return
        self._counter.recording = False
        step = trainer.global_step - (0 if trainer.fit_loop._should_accumulate() else 1)
        self.steps.append(StepSyncs(batch_idx, step, self._log_step, self._counter.events[self._start :]))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._stop()

    def _stop(self) -> None:
        counter, self._counter = self._counter, None
        if counter is not None:
            counter.__exit__(None, None, None)

    def per_optimizer_step(self, log_steps: bool) -> dict[int, list[SyncEvent]]:
        """Optimizer step -> the host syncs of its batches (all of its micro-batches), for steps with or without
        a log write."""
        steps: dict[int, list[SyncEvent]] = {}
        logged = {s.global_step for s in self.steps if s.log_step}
        for s in self.steps:
            if (s.global_step in logged) == log_steps:
                steps.setdefault(s.global_step, []).extend(s.events)
        return steps
