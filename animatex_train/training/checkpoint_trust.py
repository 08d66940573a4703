"""One policy for every path that reads a checkpoint: never run code hidden in one.

A checkpoint is a pickle; unrestricted unpickling runs whatever ``__reduce__`` the file names. Every reader
of the project goes through this module: ``fit/validate/test/predict --ckpt_path`` (a local file, a folder
or an ``http(s)://`` URL), the automatic resume, DeepSpeed ZeRO folders (``mp_rank_00_model_states.pt`` and
the optimizer partitions), FSDP full files and sharded folders, ``export``, ``model.init.checkpoint`` and
``animate``. The policy:

* **weights-only by default**: ``torch.load(weights_only=True)``, PyTorch's restricted unpickler that
  rebuilds tensors and plain containers only, plus an allowlist of DeepSpeed's plain state holders found in
  ZeRO partitions (and, for FSDP sharded folders, the ``torch.distributed.checkpoint`` metadata classes).
  The checkpoints this project writes hold nothing else, so resuming and evaluating them needs no flag, and
  the "our own run directory" exemption the design allows is not needed at all;
* **full unpickling only with an explicit trust flag** (``--trust_checkpoint true`` for the Lightning
  subcommands, ``--trust_checkpoint`` for ``export`` / ``animate``), and only for a local path;
* **a remote URL is never fully unpickled**, trust flag or not.

Libraries that call ``torch.load(weights_only=False)`` themselves (DeepSpeed's checkpoint engine), default
to it for URLs (Lightning's ``_load``), or use a plain ``pickle.Unpickler`` (Lightning's FSDP ``_lazy_load``,
``torch.distributed.checkpoint``'s metadata) are restricted from outside by ``restricted_loading``: their
own code is kept, only the unpickler they reach is swapped for the restricted one while a load runs.
"""

from __future__ import annotations

import contextlib
import io
import pathlib
import pickle
import sys
import types
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


class CheckpointRefusedError(pickle.UnpicklingError):
    """A checkpoint holds objects the restricted unpickler refuses (or a remote one was to be trusted).

    Subclasses ``pickle.UnpicklingError`` so callers catching PyTorch's own refusal also catch this one.
    """


def is_remote(path: str | Path) -> bool:
    """True for URLs (``http://``, ``https://``, ``s3://``, ...): such checkpoints are never fully unpickled."""
    return "://" in str(path)


def refusal_message(source: str | Path, error: BaseException, flag: str | None) -> str:
    """``what, where, how to fix`` for a refused checkpoint; ``flag`` is the trust switch as the user spells it
    (None where there is none: weights files are only ever read weights-only)."""
    reason = str(error).strip().splitlines()
    # PyTorch's refusal is a page of advice; its first line after "Weights only load failed" names the object.
    detail = next(
        (line.strip() for line in reason if "GLOBAL" in line or "Unsupported" in line),
        reason[0] if reason else type(error).__name__,
    )
    detail = detail.removeprefix("WeightsUnpickler error: ").split(" was not an allowed global")[0]
    if flag is None:
        return (
            f"checkpoint {source} holds objects other than tensors and plain containers ({detail}); it is never "
            "unpickled: pass a .safetensors file or a plain state dict of tensors"
        )
    fix = (
        "a remote checkpoint is never unpickled beyond tensors: use one saved by this project, or download it, "
        f"inspect it and pass the local path with {flag}"
        if is_remote(source)
        else f"if it comes from your own run, pass {flag} (this runs any code the file holds: never for files "
        "from elsewhere)"
    )
    return f"checkpoint {source} holds objects other than tensors and plain containers ({detail}); {fix}"


def deepspeed_safe_globals() -> list[Any]:
    """DeepSpeed types inside ZeRO partitions: plain state holders, safe to rebuild field by field.

    Empty while DeepSpeed is not imported (then nothing reading a ZeRO folder runs; importing it costs seconds).
    """
    if "deepspeed" not in sys.modules:
        return []
    try:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address
    except ImportError:  # DeepSpeed is optional at run time: without it no ZeRO checkpoint is read either
        return []
    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


class _MetadataUnpickler(pickle.Unpickler):
    """``torch.distributed.checkpoint`` metadata (FSDP sharded folders) without arbitrary globals.

    DCP writes its ``.metadata`` with plain ``pickle`` and reads it with ``pickle.load``; it holds dataclasses
    and enums of ``torch.distributed.checkpoint``, ``torch.Size``, dtypes, layouts and memory formats.
    """

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "pathlib" and name in ("PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"):
            return getattr(pathlib, name)  # storage file names; constructing a path does nothing else
        if (module, name) == ("torch.serialization", "_get_layout"):  # name string -> torch.layout, nothing else
            return torch.serialization._get_layout
        if module == "torch":
            value = getattr(torch, name, None)
            if value is torch.Size or isinstance(value, (torch.dtype, torch.layout, torch.memory_format)):
                return value
        if module.startswith("torch.distributed.checkpoint.") and "." not in name:
            value = super().find_class(module, name)
            if isinstance(value, type):
                return value
        raise CheckpointRefusedError(f"Unsupported global: GLOBAL {module}.{name} in checkpoint metadata")


def _restricted_pickle_module() -> types.SimpleNamespace:
    def load(file, **_: Any) -> Any:
        return _MetadataUnpickler(file).load()

    return types.SimpleNamespace(
        load=load,
        loads=lambda data, **_: load(io.BytesIO(data)),
        dump=pickle.dump,
        dumps=pickle.dumps,
        UnpicklingError=pickle.UnpicklingError,
    )


def _weights_only_lazy_load(filename: Any) -> Any:
    # Lightning's FSDP ``_lazy_load`` unpickles with a plain Unpickler; mmap keeps the same "tensors are read
    # when used" cost without it.
    return torch.load(filename, map_location="cpu", mmap=True, weights_only=True)


@contextlib.contextmanager
def _patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


@contextlib.contextmanager
def restricted_loading(
    source: str | Path, trust: bool = False, flag: str | None = "--trust_checkpoint"
) -> Iterator[None]:
    """Inside: every ``torch.load`` (whoever calls it), Lightning's FSDP lazy loader and DCP metadata reads are
    weights-only, unless ``trust`` and ``source`` is local. A refusal becomes ``CheckpointRefusedError``
    naming ``source`` and ``flag``.

    Raises:
        CheckpointRefusedError: ``trust`` asked for a remote ``source``, or a file held a refused object.
    """
    if trust and is_remote(source):
        raise CheckpointRefusedError(
            f"checkpoint {source}: {flag} applies to local files only; a remote checkpoint is never unpickled beyond "
            "tensors (download it, inspect it, then pass the local path)"
        )
    if trust:
        yield
        return
    original_load = torch.serialization.load

    def weights_only_load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True  # DeepSpeed passes False, Lightning None for URLs: both overridden
        try:
            return original_load(*args, **kwargs)
        except pickle.UnpicklingError as error:  # name the very file (e.g. one ZeRO partition of a folder)
            file = args[0] if args else kwargs.get("f", source)
            where = file if isinstance(file, (str, Path)) else source
            raise CheckpointRefusedError(refusal_message(where, error, flag)) from error

    with contextlib.ExitStack() as stack:
        stack.enter_context(_patched(torch, "load", weights_only_load))
        stack.enter_context(_patched(torch.serialization, "load", weights_only_load))
        stack.enter_context(torch.serialization.safe_globals(deepspeed_safe_globals()))
        lightning_fsdp = sys.modules.get("lightning.pytorch.strategies.fsdp")  # FSDP full checkpoints
        if lightning_fsdp is not None:  # (not imported: no Lightning strategy can call it; inference stays light)
            stack.enter_context(_patched(lightning_fsdp, "_lazy_load", _weights_only_lazy_load))
        with contextlib.suppress(ImportError):  # FSDP sharded folders: DCP's metadata pickle
            from torch.distributed.checkpoint import filesystem as dcp_filesystem

            stack.enter_context(_patched(dcp_filesystem, "pickle", _restricted_pickle_module()))
        try:
            yield
        except CheckpointRefusedError as error:
            if str(source) in str(error) or "://" in str(error):
                raise
            raise CheckpointRefusedError(refusal_message(source, error, flag)) from error
        except pickle.UnpicklingError as error:
            raise CheckpointRefusedError(refusal_message(source, error, flag)) from error


def load_checkpoint_file(
    path: str | Path, trust: bool = False, flag: str | None = "--trust_checkpoint", **kwargs: Any
) -> Any:
    """``torch.load`` of one file under the policy (``map_location`` defaults to the CPU)."""
    kwargs.setdefault("map_location", "cpu")
    kwargs["weights_only"] = not trust
    with restricted_loading(path, trust, flag):
        return torch.load(path, **kwargs)


def guard_strategy_loading(strategy: Any, trust: bool = False) -> None:
    """Route ``strategy.load_checkpoint`` through the policy.

    Every checkpoint a Lightning subcommand reads (``--ckpt_path`` file, folder or URL; the automatic resume)
    goes through the strategy's ``load_checkpoint``, whichever strategy the recipe picked (``ddp`` by name,
    DeepSpeed, FSDP), so wrapping that one bound method of the trainer's strategy covers them all.
    """
    original = strategy.load_checkpoint
    if getattr(original, "animatex_guarded", False):
        return

    def load_checkpoint(checkpoint_path: Any, weights_only: bool | None = None) -> Any:
        with restricted_loading(checkpoint_path, trust, flag="--trust_checkpoint true"):
            return original(checkpoint_path, weights_only=not trust)

    load_checkpoint.animatex_guarded = True  # type: ignore[attr-defined]
    strategy.load_checkpoint = load_checkpoint
