"""The explicit pose indicator's training-time pose transform (EPI, docs/official_release.md §3): realign, then rescale.

With probability lambda (``apply_prob``) a driving clip is realigned to an anchor drawn from the pose pool and then
edited by one random combination from the rescale pool; otherwise it is left as it is. EPI runs on keypoints,
before the pose images are drawn (``pose_render``).

Every random draw comes from a generator seeded only by ``(seed, epoch, sample_key)``, so a resumed or re-sharded
run draws the same transform for a sample on any rank or worker, in any order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from animatex_train.data.epi.anchor_pool import AnchorPool, AnchorPoolError
from animatex_train.data.epi.realign import RealignConfig, realign_to_anchor
from animatex_train.data.epi.rescale import RescaleConfig, RescalePlan, apply_rescale_plan, sample_rescale_plan
from animatex_train.data.format.keypoints import PoseSequence, concat_poses
from animatex_train.data.pose.skeleton import validate_pose


@dataclass(frozen=True)
class EPIConfig:
    """Explicit pose indicator settings; every ablation of the paper is a choice of these values.

    Attributes:
        apply_prob: lambda, the probability that a sample is transformed (paper Table 6: 1.0 is best on A2Bench,
            0.9-0.95 on TikTok).
        enable_realign: realign the driving pose to an anchor (Table 5 "w/o Realign" turns it off).
        enable_rescale: apply the rescale pool (Table 5 "w/o Rescale(s)" turns it off).
        realign: realignment settings.
        rescale: the rescale pool (per-group switches, probabilities, ranges).
        transform_reference_pose: apply the same transform to the reference pose image.
        transform_ipi_keypoints: feed the transformed keypoints to the implicit pose indicator.
    """

    apply_prob: float = 1.0
    enable_realign: bool = True
    enable_rescale: bool = True
    realign: RealignConfig = field(default_factory=RealignConfig)
    rescale: RescaleConfig = field(default_factory=RescaleConfig)
    # Default False. EPI exists to simulate, during self-driven training, the misalignment between the reference
    # image and the driving poses that appears at inference (docs/official_release.md §3). At inference the
    # reference pose is extracted from the reference image itself, so it always describes the reference character's
    # own body, never the driving skeleton (docs/official_release.md §7: ref_pose.jpg is the DWPose of the reference
    # image). Transforming it with the driving poses would break that correspondence, which holds in every inference
    # run, and would leave reference image, reference pose and driving poses all mutually misaligned, a situation
    # inference never shows.
    # Keeping it untransformed makes training match inference: reference pose <-> reference image, and a driving
    # pose whose body shape differs from both.
    transform_reference_pose: bool = False
    # Default False: the released inference feeds the implicit pose indicator raw driving keypoints
    # (docs/official_release.md §1.4, §3).
    transform_ipi_keypoints: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.apply_prob <= 1.0:
            raise ValueError(f"data.epi.apply_prob (lambda) must be in [0, 1], got {self.apply_prob}")
        if self.apply_prob > 0 and not (self.enable_realign or self.enable_rescale):
            warnings.warn(
                "data.epi.apply_prob > 0 has no effect with data.epi.enable_realign and enable_rescale both false",
                stacklevel=2,
            )
        if self.apply_prob > 0 and self.enable_rescale and not self.rescale.enabled_ops:
            warnings.warn(
                "data.epi.enable_rescale has no effect: every data.epi.rescale.enable_* op is false", stacklevel=2
            )

    @property
    def does_anything(self) -> bool:
        return self.apply_prob > 0 and (self.enable_realign or (self.enable_rescale and bool(self.rescale.enabled_ops)))

    @property
    def needs_anchors(self) -> bool:
        """Whether realignment or Add will draw anchors from the pool."""
        return self.apply_prob > 0 and (self.enable_realign or (self.enable_rescale and self.rescale.enable_add))

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, Any]) -> EPIConfig:
        """The default config with ``overrides`` applied; nested ``realign`` / ``rescale`` take dicts, and lists
        are accepted for tuple fields (YAML has no tuples). Unknown keys raise ``ValueError``."""
        return _replace(cls(), overrides, "data.epi")

    @classmethod
    def from_recipe(cls, path: str | Path) -> EPIConfig:
        """The ``data.epi`` values of a recipe or overlay YAML (e.g. ``recipes/ablations/wo_add.yaml``, the one
        place the paper's EPI ablations are written) over the defaults; a file without them gives the defaults."""
        values = yaml.safe_load(Path(path).read_text()) or {}
        epi = (values.get("data") or {}).get("epi") or {} if isinstance(values, dict) else None
        if not isinstance(epi, Mapping):
            raise ValueError(f"{path}: data.epi must be a mapping of EPI settings, got {epi!r}")
        return cls.from_overrides(epi)


def _replace(config: Any, overrides: Mapping[str, Any], label: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(config)}
    changes = {}
    for key, value in overrides.items():
        if key not in fields:
            raise ValueError(f"{label}: unknown setting {key!r}; known settings: {sorted(fields)}")
        current = getattr(config, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ValueError(f"{label}.{key}: expected a mapping of settings, got {value!r}")
            value = _replace(current, value, f"{label}.{key}")
        elif isinstance(current, tuple) and isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        changes[key] = value
    return dataclasses.replace(config, **changes)


def epi_rng(seed: int, epoch: int, sample_key: str) -> np.random.Generator:
    """The generator of one sample's EPI draws, a function of ``(seed, epoch, sample_key)`` only."""
    digest = hashlib.blake2b(f"animatex-epi\0{int(seed)}\0{int(epoch)}\0{sample_key}".encode(), digest_size=16)
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int.from_bytes(digest.digest(), "little"))))


@dataclass(frozen=True)
class EPIPlan:
    """What EPI will do to one sample.

    Attributes:
        applied: whether the sample is transformed (drawn with probability ``apply_prob``).
        anchor_index: index of the anchor in the pool, or None.
        realign: whether to realign.
        rescale: the drawn rescale combination, or None.
    """

    applied: bool
    anchor_index: int | None = None
    realign: bool = False
    rescale: RescalePlan | None = None


def sample_epi_plan(config: EPIConfig, num_anchors: int, seed: int, epoch: int, sample_key: str) -> EPIPlan:
    """Draw the plan of one sample. The coin is always the first draw, so lambda alone decides application."""
    rng = epi_rng(seed, epoch, sample_key)
    if not rng.random() < config.apply_prob or not config.does_anything:
        return EPIPlan(applied=False)
    anchor_index = int(rng.integers(num_anchors)) if num_anchors > 0 else None
    rescale = sample_rescale_plan(rng, config.rescale) if config.enable_rescale else None
    return EPIPlan(applied=True, anchor_index=anchor_index, realign=config.enable_realign, rescale=rescale)


def run_epi_plan(
    pose: PoseSequence, plan: EPIPlan, anchors: AnchorPool | None, config: EPIConfig, name: str = "pose"
) -> tuple[PoseSequence, PoseSequence]:
    """Execute a plan; returns ``(realigned, final)`` (both ``pose`` when the plan is not applied)."""
    if not plan.applied:
        return pose, pose
    anchor = None
    if plan.anchor_index is not None and anchors is not None:
        anchor = anchors.anchor(plan.anchor_index)
    elif config.needs_anchors:
        raise AnchorPoolError(f"{name}: EPI needs an anchor pool (realignment or Add is enabled) but none was given")
    realigned = realign_to_anchor(pose, anchor, config.realign, name=name) if plan.realign else pose
    final = realigned
    if plan.rescale is not None:
        final = apply_rescale_plan(realigned, plan.rescale, anchor, name=name)
    return realigned, final


def apply_epi(
    pose: PoseSequence, anchors: AnchorPool | None, config: EPIConfig, seed: int, epoch: int, sample_key: str
) -> PoseSequence:
    """EPI on one clip: with probability lambda, realign to a random anchor and apply one rescale combination.

    Args:
        pose: the driving clip's keypoints, ``t`` frames.
        anchors: the pose pool (may be None only when the config draws no anchor).
        config: EPI settings.
        seed: the run's seed.
        epoch: the data epoch.
        sample_key: the sample's stable key (e.g. the WebDataset ``__key__``).

    Returns:
        The transformed clip (``pose`` itself when not applied).

    Raises:
        KeypointError: bad keypoints; the message names the sample.
    """
    name = f"sample {sample_key!r}"
    validate_pose(pose, name)
    plan = sample_epi_plan(config, len(anchors) if anchors is not None else 0, seed, epoch, sample_key)
    return run_epi_plan(pose, plan, anchors, config, name)[1]


@dataclass(frozen=True)
class EPIOutput:
    """The poses a training sample uses after EPI.

    Attributes:
        pose: driving poses to draw for the explicit pose encoder.
        reference_pose: the reference pose to draw (transformed only with ``transform_reference_pose``), or None.
        ipi_pose: driving keypoints for the implicit pose indicator (transformed only with
            ``transform_ipi_keypoints``).
        ipi_reference_pose: reference keypoints for the implicit pose indicator, or None.
        plan: what was drawn.
    """

    pose: PoseSequence
    reference_pose: PoseSequence | None
    ipi_pose: PoseSequence
    ipi_reference_pose: PoseSequence | None
    plan: EPIPlan


class EPITransform:
    """EPI bound to a pool and a seed, applied per sample in the data pipeline.

    Named for what it is, a data transform: ``ExplicitPoseIndicator`` is the pose-image encoder module in
    ``models/pose_indicator/explicit.py`` (house style section 6.2).
    """

    def __init__(self, config: EPIConfig, anchors: AnchorPool | None, seed: int) -> None:
        """Check at start-up that the pool is there when the config needs it.

        Raises:
            AnchorPoolError: the config realigns or adds parts but no pool was given.
        """
        if config.needs_anchors and anchors is None:
            raise AnchorPoolError(
                "an empty anchor pool is an error at start-up, not mid-training: this EPI config realigns or adds "
                "parts, so give an anchor pool (`animatex-train anchor-pool ...`) or disable realign and Add"
            )
        self.config = config
        self.anchors = anchors
        self.seed = int(seed)

    def __call__(
        self, pose: PoseSequence, *, epoch: int, sample_key: str, reference_pose: PoseSequence | None = None
    ) -> EPIOutput:
        """Transform one sample's driving poses (and, if configured, its reference pose) with one draw."""
        name = f"sample {sample_key!r}"
        validate_pose(pose, name)
        if reference_pose is not None:
            validate_pose(reference_pose, f"{name} reference pose")
        num_anchors = len(self.anchors) if self.anchors is not None else 0
        plan = sample_epi_plan(self.config, num_anchors, self.seed, epoch, sample_key)
        joint = reference_pose is not None and self.config.transform_reference_pose
        if joint and reference_pose.frame_size != pose.frame_size:
            raise ValueError(
                f"{name}: reference pose frame size {reference_pose.frame_size} differs from the driving clip's "
                f"{pose.frame_size}; data.epi.transform_reference_pose needs both from the same video"
            )
        # The reference frames go after the driving frames so realignment measures on the driving clip.
        clip = concat_poses(pose, reference_pose) if joint else pose
        transformed = run_epi_plan(clip, plan, self.anchors, self.config, name)[1]
        driving = transformed.select(np.arange(pose.num_frames)) if joint else transformed
        reference = reference_pose
        if joint:
            reference = transformed.select(np.arange(pose.num_frames, clip.num_frames))
        return EPIOutput(
            pose=driving,
            reference_pose=reference,
            ipi_pose=driving if self.config.transform_ipi_keypoints else pose,
            ipi_reference_pose=reference if self.config.transform_ipi_keypoints else reference_pose,
            plan=plan,
        )


__all__ = [
    "EPIConfig",
    "EPIOutput",
    "EPIPlan",
    "EPITransform",
    "apply_epi",
    "epi_rng",
    "run_epi_plan",
    "sample_epi_plan",
]
