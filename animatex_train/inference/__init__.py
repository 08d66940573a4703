"""Inference: ``animate(ref, video, settings) -> frames + metadata``, the ``animatex-train animate`` command, and
its geometry (long-video windows, pose alignment).

Uses the models, encoders, diffusion and data packages, never Lightning (a training checkpoint is read through
``training/export.py`` only when one is given instead of an export). Names are imported lazily so that
``import animatex_train.inference`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AnimateSettings", "AnimationResult", "animate", "load_models", "models_for"]


def __getattr__(name: str) -> Any:
    if name in ("animate", "AnimationResult", "models_for"):
        from animatex_train.inference import pipeline

        return getattr(pipeline, name)
    if name == "load_models":
        from animatex_train.inference.runtime import load_models

        return load_models
    if name == "AnimateSettings":
        from animatex_train.inference.settings import AnimateSettings

        return AnimateSettings
    raise AttributeError(f"module 'animatex_train.inference' has no attribute {name!r}")
