"""Version-specific workarounds, kept in one place (house style: never inline in the main path)."""

from __future__ import annotations

import glob
import importlib.abc
import importlib.util
import os
import sys

_torchvision_schema_lib = None  # torch.library.Library once defined (kept alive: the schemas live as long as it)


def install_torchvision_cpu_shim() -> bool:
    """Let a CUDA build of torchvision import beside a CPU build of torch.

    PyPI only has CUDA builds of torchvision for x86-64. Beside ``torch==2.13.0+cpu`` its ``_C``
    extension cannot load (it links ``libtorch_cuda.so``), and its Python side then fails at import
    with ``RuntimeError: operator torchvision::nms does not exist``; that also breaks ``import
    lightning``, diffusers and open_clip, which probe for torchvision. We define the two op schemas
    torchvision's fake-tensor registrations expect, so the pure-Python parts (transforms, models)
    import. The compiled ops (nms, roi_align kernels, image decode) stay unavailable; this project
    needs none of them. Measured facts: ``docs/dependencies.md`` section 1.2.

    It is a no-op when torch is a CUDA build, when torchvision is absent, or when its extension
    loads (a matching CPU torchvision, e.g. from the PyTorch CPU index).

    Returns:
        True if the schemas were defined by this call.
    """
    global _torchvision_schema_lib
    import torch

    if _torchvision_schema_lib is not None or torch.version.cuda is not None:
        return False
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    extension = glob.glob(os.path.join(spec.submodule_search_locations[0], "_C*.so"))
    if extension:
        try:
            torch.ops.load_library(extension[0])
            return False  # the real ops are there
        except OSError:
            pass
    try:
        torch.ops.torchvision.nms.default  # noqa: B018 - defined by someone else already
        return False
    except (AttributeError, RuntimeError):
        pass
    _torchvision_schema_lib = torch.library.Library("torchvision", "FRAGMENT")
    _torchvision_schema_lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _torchvision_schema_lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    return True


class _ShimBeforeTorchvision(importlib.abc.MetaPathFinder):
    """Runs ``install_torchvision_cpu_shim`` when torchvision is first imported, then steps aside.

    Importing the package must stay cheap (``animatex-train --help`` imports no torch), so the shim is not run
    at package import: this finder defers it to the moment something (lightning, diffusers, open_clip) imports
    torchvision, which imports torch anyway."""

    def find_spec(self, name, path, target=None):  # noqa: ANN001 - importlib's protocol
        if name == "torchvision":
            uninstall_lazy_shim()
            install_torchvision_cpu_shim()
        return None  # the normal finders locate torchvision


_LAZY_FINDER = _ShimBeforeTorchvision()


def install_lazy_shim() -> None:
    """Run the shim before torchvision's first import (at once if torchvision is already imported)."""
    if "torchvision" in sys.modules:
        install_torchvision_cpu_shim()
    elif _LAZY_FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _LAZY_FINDER)


def uninstall_lazy_shim() -> None:
    if _LAZY_FINDER in sys.meta_path:
        sys.meta_path.remove(_LAZY_FINDER)
