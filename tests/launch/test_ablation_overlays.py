"""Each ablation overlay, layered over the tiny recipe through the real CLI, changes exactly its component.

Every overlay is instantiated once (``AnimateXCLI(run=False)``: the system with its denoiser, the data
module, the trainer) and compared with the tiny recipe alone: the resolved configs differ in the overlay's
keys only, the built denoiser has (or lacks) the modules of the variant, and the data module's EPI
transform does what the ablation removes, on a real pose.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from animatex_train.cli.lightning import AnimateXCLI
from animatex_train.data.epi.anchor_pool import AnchorPool
from animatex_train.data.epi.preview import demo_pose_sequence
from animatex_train.data.epi.transform import EPIConfig, EPITransform
from animatex_train.data.format.keypoints import visible
from animatex_train.launch.campaign import ABLATIONS_DIR, BY_NAME, CAMPAIGN, flatten, overlay_changes
from animatex_train.models.flops import count_forward_flops
from animatex_train.models.pose_indicator.implicit import KeypointEncoder
from animatex_train.models.transformers import SpatialTransformer

TINY = Path(__file__).resolve().parents[2] / "recipes" / "debug" / "tiny_cpu.yaml"
IPI_ABLATIONS = ("wo_ipi", "wo_lq", "wo_dq", "pa", "kv_q")
NUM_KEYS = 400  # samples drawn to observe the EPI transform's behaviour


@functools.cache
def built(name: str | None):
    """The CLI of the tiny recipe with the ablation overlay ``name`` on top (None: the tiny recipe alone)."""
    args = ["--config", str(TINY)] + (["--config", str(BY_NAME[name].overlay())] if name else [])
    return AnimateXCLI(args=args, run=False)


def resolved(name: str | None) -> dict:
    """The resolved settings as dotted keys; an unset ``data.epi`` is what the data module makes of it."""
    values = built(name).config.as_dict()
    values.pop("config")  # the list of files given, not a setting
    if values["data"]["epi"] is None:  # the tiny recipe leaves EPI at VideoDataModule's default, EPIConfig()
        values["data"]["epi"] = dataclasses.asdict(EPIConfig())
    return flatten(values)


@functools.cache
def anchors() -> AnchorPool:
    demos = [demo_pose_sequence(1, seed=100 + s, shape_jitter=0.35, body_scale=0.75) for s in range(6)]
    return AnchorPool(
        np.concatenate([d.to_array() for d in demos]),
        [d.frame_size for d in demos],
        tuple(f"anchor{s}" for s in range(6)),
    )


def epi_outputs(name: str | None) -> list:
    """The EPI transform the data module of ``name`` builds, applied to one clip under ``NUM_KEYS`` sample keys."""
    clip = demo_pose_sequence(4, seed=3, body_scale=0.7)
    transform = EPITransform(built(name).datamodule.epi, anchors(), seed=0)
    return [transform(clip, epoch=0, sample_key=f"k{i}") for i in range(NUM_KEYS)]


def spatial_transformers(name: str | None) -> list[SpatialTransformer]:
    return [m for m in built(name).model.denoiser.modules() if isinstance(m, SpatialTransformer)]


def test_every_ablation_has_an_overlay_and_every_overlay_is_an_ablation():
    files = {p.stem for p in ABLATIONS_DIR.glob("*.yaml")}
    assert files == set(BY_NAME) and len(CAMPAIGN) == 19


@pytest.mark.parametrize("ablation", CAMPAIGN, ids=lambda a: a.name)
def test_overlay_changes_exactly_its_settings(ablation):
    base, ablated = resolved(None), resolved(ablation.name)
    changed = {k: ablated[k] for k in ablated if not k.startswith("tracking.") and ablated[k] != base.get(k)}
    expected = overlay_changes(ablation)
    if ablation.name == "lambda_1.0":  # explicit, and equal to the default (see full below)
        assert ablated["data.epi.apply_prob"] == 1.0 and changed == {}
    else:
        assert changed == expected
    assert ablated["tracking.name"] == ablation.name and "ablation" in ablated["tracking.tags"]


def test_full_is_the_default_configuration():
    full, base = built("full"), built(None)
    assert full.model.config.denoiser == base.model.config.denoiser
    assert full.datamodule.epi == base.datamodule.epi == EPIConfig()
    ipi = full.model.config.denoiser.ipi
    assert (ipi.enabled, ipi.query, ipi.placement) == (True, "learned+keypoints", "sequential")
    for name in IPI_ABLATIONS:  # and the IPI ablations leave EPI at its default
        assert built(name).datamodule.epi == EPIConfig()


def test_without_ipi_builds_no_implicit_pose_indicator_and_no_pose_attention():
    denoiser = built("wo_ipi").model.denoiser
    assert denoiser.ipi is None
    assert all(t.pose_attention is None for t in spatial_transformers("wo_ipi"))
    assert not any(".pose_attention." in k or k.startswith("ipi.") for k in denoiser.state_dict())
    assert all(t.pose_attention is not None for t in spatial_transformers(None))  # the full model has them


def test_without_learnable_query_has_no_latents_and_without_keypoint_query_no_keypoint_encoder():
    full, wo_lq, wo_dq = (built(n).model.denoiser.ipi for n in (None, "wo_lq", "wo_dq"))
    assert isinstance(full.extractor.latents, torch.nn.Parameter) and isinstance(full.keypoint_encoder, KeypointEncoder)
    assert wo_lq.extractor.latents is None and isinstance(wo_lq.keypoint_encoder, KeypointEncoder)
    assert isinstance(wo_dq.extractor.latents, torch.nn.Parameter) and wo_dq.keypoint_encoder is None


def test_parallel_placement():
    assert spatial_transformers("pa") and all(t.parallel for t in spatial_transformers("pa"))
    assert not any(t.parallel for t in spatial_transformers(None))


def _key_value_tokens(name: str | None) -> int:
    """How many tokens the extractor's first attention reads keys/values from (besides its queries)."""
    ipi = built(name).model.denoiser.ipi
    seen = []
    hook = ipi.extractor.layers[0][0].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    config = ipi.config
    try:
        with torch.no_grad():
            ipi(torch.rand(1, 3, 2, config.num_keypoints), torch.randn(1, 3, config.clip_dim), 1, 3)
    finally:
        hook.remove()
    return seen[0][1]


def test_kv_q_reads_keys_and_values_from_the_keypoint_tokens():
    # Full: the frame's one pooled CLIP token is the key/value source; KV_Q: the keypoint encoder's tokens.
    assert _key_value_tokens(None) == 1
    assert _key_value_tokens("kv_q") == built("kv_q").model.config.denoiser.ipi.num_query_tokens > 1


EPI_OVERLAYS = sorted(a.name for a in CAMPAIGN if any(key.startswith("data.epi.") for key in overlay_changes(a)))


@pytest.mark.parametrize("name", EPI_OVERLAYS)
def test_epi_overlay_reads_the_same_through_the_cli_and_the_preview(name):
    """``epi-preview --config <overlay>`` shows the transform the CLI builds for a run with that overlay."""
    assert len(EPI_OVERLAYS) == 13  # w/o EPI, Realign, Rescale, Add, Drop, BS, NF, AL and five lambdas
    assert built(name).datamodule.epi == EPIConfig.from_recipe(BY_NAME[name].overlay())
    assert built(name).model.config.denoiser == built(None).model.config.denoiser


def test_without_epi_the_transform_is_the_identity():
    clip = demo_pose_sequence(4, seed=3, body_scale=0.7)
    transform = EPITransform(built("wo_epi").datamodule.epi, None, seed=0)  # needs no anchor pool either
    for i in range(50):
        out = transform(clip, epoch=0, sample_key=f"k{i}")
        assert not out.plan.applied and out.pose is clip


@pytest.mark.parametrize(
    "name, op", [("wo_add", "add"), ("wo_drop", "drop"), ("wo_bs", "bs"), ("wo_nf", "nf"), ("wo_al", "al")]
)
def test_rescale_ablation_never_draws_its_operation(name, op):
    full_ops = [set(o.plan.rescale.ops) for o in epi_outputs(None)]
    ops = [set(o.plan.rescale.ops) for o in epi_outputs(name)]
    assert any(op in s for s in full_ops) and not any(op in s for s in ops)
    assert any(s for s in ops)  # the other operations still run


def test_without_drop_no_body_part_disappears():
    # A sample key draws the same plan under both configs apart from the ablated op (and, when no op was drawn, the
    # fallback op, picked among the enabled ones): where the other ops agree, full loses points only by dropping.
    def missing(output) -> int:
        return int((~visible(output.pose.to_array())).sum())  # body, feet, hands, face

    pairs = [
        (f, w)
        for f, w in zip(epi_outputs(None), epi_outputs("wo_drop"), strict=True)
        if set(f.plan.rescale.ops) - {"drop"} == set(w.plan.rescale.ops)
    ]
    dropped = [(f, w) for f, w in pairs if "drop" in f.plan.rescale.ops]
    kept = [(f, w) for f, w in pairs if "drop" not in f.plan.rescale.ops]
    assert len(dropped) > 50 and len(kept) > 50
    assert all(missing(f) > missing(w) for f, w in dropped)
    assert all(missing(f) == missing(w) for f, w in kept)


def test_without_rescale_only_realigns_and_without_realign_only_rescales():
    assert all(o.plan.applied and o.plan.realign and o.plan.rescale is None for o in epi_outputs("wo_rescale"))
    assert all(o.plan.applied and not o.plan.realign and o.plan.rescale for o in epi_outputs("wo_realign"))


@pytest.mark.parametrize("name", ["lambda_1.0", "lambda_0.98", "lambda_0.95", "lambda_0.9", "lambda_0.8"])
def test_lambda_is_the_fraction_of_transformed_samples(name):
    lam = float(name.split("_")[1])
    applied = np.mean([o.plan.applied for o in epi_outputs(name)])
    assert built(name).datamodule.epi.apply_prob == lam
    assert abs(applied - lam) < 0.05


@pytest.mark.parametrize("name", [None, *IPI_ABLATIONS])
def test_flops_of_every_ipi_variant_can_be_counted(name):
    # The throughput monitor counts the denoiser's FLOPs at the first training step; w/o DQ once failed there.
    assert count_forward_flops(built(name).model.config.denoiser, num_frames=4, height=32, width=32).forward_flops > 0
