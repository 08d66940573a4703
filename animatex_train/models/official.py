"""Compatibility with the official Animate-X / UniAnimate code: configs, state dicts and the forward call.

Entry points (used by the tests and by checkpoint import/export):

* ``config_from_official(kwargs)``: official ``UNetSD_Animate_X`` constructor kwargs (or a parity
  fixture's JSON, with its ``DwposeEncoder``/``Resampler`` size overrides) -> ``DenoiserConfig``;
* ``load_official_state_dict(model, state_dict, strict=True)``: load ``animate-x.pth`` /
  UniAnimate layouts (UniAnimate: the IPI keys are reported missing and keep their initialisation,
  whose zero-initialised outputs make the network exactly UniAnimate);
* ``official_forward(model, x, t, ...)``: the official forward's inputs and conventions;
* ``to_official_key`` / ``from_official_key``: the key map in both directions (native names are
  descriptive; the official ones are kept bit-for-bit in exports, typo ``temopral_conv`` included).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch

from animatex_train.models.config import ConditionDropoutConfig, DenoiserConfig, ImplicitPoseIndicatorConfig
from animatex_train.models.embeddings import sinusoid_position_table
from animatex_train.models.unet import AnimateXDenoiser, DenoiserConditions

# (native prefix, official prefix): matched at the start of a key, most specific first.
_PREFIXES: tuple[tuple[str, str], ...] = (
    ("image_projection.", "pre_image_condition."),
    ("ipi.keypoint_encoder.token_mlp.", "pose_embedding_before.pre_image_condition_p."),
    ("ipi.keypoint_encoder.", "pose_embedding_before."),
    ("ipi.extractor.", "pose_embedding_after."),
    ("local_image_encoder.conv_in.", "local_image_embedding.0."),
    ("local_image_encoder.down1.", "local_image_embedding.3."),
    ("local_image_encoder.down2.", "local_image_embedding.5."),
    ("local_image_encoder.time_adapter.", "local_image_embedding_after."),
    ("pose_image_encoder.conv_in.", "dwpose_embedding.0."),
    ("pose_image_encoder.down1.", "dwpose_embedding.3."),
    ("pose_image_encoder.down2.", "dwpose_embedding.5."),
    ("pose_image_encoder.time_adapter.", "dwpose_embedding_after."),
    ("ref_pose_encoder.conv_in.", "randomref_pose2_embedding.0."),
    ("ref_pose_encoder.down1.", "randomref_pose2_embedding.3."),
    ("ref_pose_encoder.down2.", "randomref_pose2_embedding.5."),
    ("ref_pose_encoder.time_adapter.", "randomref_pose2_embedding_after."),
    ("ref_latent_encoder.conv_in.", "randomref_embedding2.0."),
    ("ref_latent_encoder.conv_mid.", "randomref_embedding2.2."),
    ("ref_latent_encoder.conv_out.", "randomref_embedding2.4."),
    ("ref_latent_encoder.time_adapter.", "randomref_embedding_after2."),
)
# (native infix, official infix): inside UNet block keys.
_INFIXES: tuple[tuple[str, str], ...] = (
    (".temporal_conv.", ".temopral_conv."),
    (".pose_attention.norm.", ".pose_attention.norm_p."),
    (".pose_attention.proj_in.", ".pose_attention.proj_in_p."),
    (".pose_attention.transformer_blocks.", ".pose_attention.transformer_blocks_p."),
    (".pose_attention.proj_out.", ".pose_attention.proj_out_p."),
)
POSITION_TABLE_KEY = "pose_embedding_before.pos_embed.pos_table"
IPI_PREFIXES = ("pose_embedding_before.", "pose_embedding_after.")


def is_ipi_key(official_key: str) -> bool:
    """Whether an official key belongs to Animate-X's additions over UniAnimate (IPI + pose attention)."""
    return official_key.startswith(IPI_PREFIXES) or ".pose_attention." in official_key


def _translate(key: str, prefixes: list[tuple[str, str]], infixes: list[tuple[str, str]]) -> str:
    for src, dst in prefixes:
        if key.startswith(src):
            return dst + key[len(src) :]
    for src, dst in infixes:
        if src in key:
            key = key.replace(src, dst)
    return key


def to_official_key(native_key: str) -> str:
    """Our state-dict key -> the official one."""
    return _translate(native_key, list(_PREFIXES), list(_INFIXES))


def from_official_key(official_key: str) -> str:
    """An official state-dict key -> ours."""
    return _translate(official_key, [(o, n) for n, o in _PREFIXES], [(o, n) for n, o in _INFIXES])


def to_official_state_dict(model_or_state: torch.nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict (or a model) in the official layout, ready for the official inference code."""
    state = model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else model_or_state
    return {to_official_key(k): v for k, v in state.items()}


# Official UNetSD_Animate_X constructor defaults (the class signature; the released run overrides many).
_OFFICIAL_DEFAULTS: dict[str, Any] = dict(
    in_dim=4,
    dim=512,
    context_dim=1024,
    concat_dim=8,
    out_dim=6,
    dim_mult=[1, 2, 3, 4],
    num_heads=None,
    head_dim=64,
    num_res_blocks=3,
    attn_scales=[1 / 2, 1 / 4, 1 / 8],
    dropout=0.1,
    pose_attention=True,
    temporal_attention=True,
    use_image_dataset=False,
    use_fps_condition=False,
    misc_dropout=0.5,
    p_all_zero=0.1,
    p_all_keep=0.1,
    adapter_transformer_layers=1,
    num_tokens=4,
    no_hand=False,
    num=0,
    our_weight=1,
    seq_len=None,
)
_DWPOSE_DEFAULTS = dict(
    d_model=1024,
    nhead=8,
    num_encoder_layers=3,
    dim_feedforward=1024,
    dropout=0.1,
    activation="relu",
    normalize_before=False,
    pos_embed_len=33,
    input_dim=36,
    num_tokens=4,
)
_RESAMPLER_DEFAULTS = dict(dim=1024, depth=8, dim_head=64, heads=16, embedding_dim=1024, output_dim=1024, ff_mult=4)
# The released model: default_config's UNet dict updated with configs/Animate_X_infer.yaml
# (docs/official_release.md §1.5).
RELEASED_UNET_KWARGS: dict[str, Any] = dict(
    in_dim=4,
    dim=320,
    y_dim=1024,
    context_dim=1024,
    out_dim=4,
    dim_mult=[1, 2, 4, 4],
    num_heads=8,
    head_dim=64,
    num_res_blocks=2,
    attn_scales=[1.0, 0.5, 0.25],
    dropout=0.1,
    temporal_attention=True,
    temporal_attn_times=1,
    use_checkpoint=True,
    use_fps_condition=False,
    use_sim_mask=False,
    num_tokens=4,
    no_hand=True,
    num=0,
)
# Accepted and ignored: they have no effect on this architecture or are handled elsewhere.
_IGNORED = {
    "config",
    "y_dim",
    "hist_dim",
    "use_scale_shift_norm",
    "temporal_attn_times",
    "use_checkpoint",
    "use_sim_mask",
    "training",
    "inpainting",
    "zero_y",
    "black_image_feature",
    "use_pose_transformer",
    "type",
}


def config_from_official(kwargs: Mapping[str, Any]) -> DenoiserConfig:
    """Map official constructor kwargs (or a parity fixture's JSON) to a ``DenoiserConfig``.

    Missing keys take the official *class* defaults, exactly as ``UNetSD_Animate_X(**kwargs)`` would;
    ``RELEASED_UNET_KWARGS`` holds the merged released configuration. The official behaviours that the
    project's defaults depart from are kept (``keypoint_row_order="official"``, the all-dropped group keeping
    the reference slot and the IPI inputs), so the result reproduces the official network call for call;
    train with the defaults instead (see ``models/config.py``). Size overrides of the IPI's
    sub-modules may be given as ``DwposeEncoder`` / ``Resampler`` dicts (fixture JSON:
    ``monkeypatched_constructor_defaults.<name>.overridden``).
    """
    kwargs = dict(kwargs)
    dwpose, resampler = dict(_DWPOSE_DEFAULTS), dict(_RESAMPLER_DEFAULTS)
    if "constructor_kwargs" in kwargs:  # a fixture JSON
        patched = kwargs.get("monkeypatched_constructor_defaults", {})
        dwpose.update(patched.get("DwposeEncoder", {}).get("overridden", {}))
        resampler.update(patched.get("Resampler", {}).get("overridden", {}))
        kwargs = dict(kwargs["constructor_kwargs"])
    dwpose.update(kwargs.pop("DwposeEncoder", {}) or {})
    resampler.update(kwargs.pop("Resampler", {}) or {})
    unknown = set(kwargs) - set(_OFFICIAL_DEFAULTS) - _IGNORED
    if unknown:  # the official constructor swallows them in **kwargs
        warnings.warn(
            f"config_from_official: official UNet argument(s) {sorted(unknown)} have no effect (the "
            "official constructor ignores unknown arguments too)",
            stacklevel=2,
        )
    k = {**_OFFICIAL_DEFAULTS, **{key: v for key, v in kwargs.items() if key in _OFFICIAL_DEFAULTS}}
    for name, released in (("no_hand", True), ("num", 0)):
        if name in kwargs and k[name] != released:  # they size only the unconditional zero keypoints, no parameter
            warnings.warn(
                f"config_from_official: {name}={k[name]!r} builds the same network as {name}={released!r}; "
                "the IPI reads the 18 body keypoints either way (the official unconditional branch would "
                "fail with it)",
                stacklevel=2,
            )
    unsupported = {
        "use_fps_condition": (k["use_fps_condition"], False),
        "use_image_dataset": (k["use_image_dataset"], False),
        "pose_attention": (k["pose_attention"], True),
    }
    for name, (got, supported) in unsupported.items():
        if got != supported:
            raise ValueError(
                f"config_from_official: {name}={got!r} is not supported (no released model uses it; the official "
                f"forward needs {name}={supported!r}); for the UniAnimate layout use ipi.enabled=false"
            )
    if k["in_dim"] != k["out_dim"]:
        raise ValueError(f"config_from_official: in_dim ({k['in_dim']}) must equal out_dim ({k['out_dim']})")
    if dwpose["d_model"] != resampler["dim"]:
        raise ValueError(
            "config_from_official: DwposeEncoder.d_model must equal Resampler.dim (their outputs are added)"
        )
    if resampler["output_dim"] != k["context_dim"]:
        raise ValueError("config_from_official: Resampler.output_dim must equal context_dim (pose attention reads it)")
    if dwpose["input_dim"] % 2 or dwpose["activation"] != "relu" or dwpose["normalize_before"]:
        raise ValueError("config_from_official: only the released DwposeEncoder variant (relu, post-norm) is supported")
    seq_len = k["seq_len"] if k["seq_len"] is not None else dwpose["pos_embed_len"]
    ipi = ImplicitPoseIndicatorConfig(
        enabled=True,
        residual_weight=float(k["our_weight"]),
        width=dwpose["d_model"],
        num_query_tokens=dwpose["num_tokens"],
        num_keypoints=dwpose["input_dim"] // 2,
        max_frames=seq_len,
        keypoint_heads=dwpose["nhead"],
        keypoint_layers=dwpose["num_encoder_layers"],
        keypoint_ff_dim=dwpose["dim_feedforward"],
        keypoint_dropout=dwpose["dropout"],
        extractor_depth=resampler["depth"],
        extractor_heads=resampler["heads"],
        extractor_head_dim=resampler["dim_head"],
        extractor_ff_mult=resampler["ff_mult"],
        clip_dim=resampler["embedding_dim"],
        keypoint_row_order="official",
    )
    dim = k["dim"]
    # The official constructor tests `scale in attn_scales` at each level's scale 1, 1/2, ...; entries that match no
    # level (deeper than the UNet, or not a power of 1/2) are simply never reached, so they are dropped here.
    reached = {1.0 / 2**i for i in range(len(k["dim_mult"]))}
    attn_scales = [float(s) for s in k["attn_scales"] if float(s) in reached]
    return DenoiserConfig(
        latent_channels=k["in_dim"],
        concat_channels=k["concat_dim"],
        base_channels=dim,
        channel_mult=list(k["dim_mult"]),
        num_res_blocks=k["num_res_blocks"],
        head_dim=k["head_dim"],
        first_temporal_heads=k["num_heads"] if k["num_heads"] else dim // 32,
        attn_scales=attn_scales,
        temporal_attention=bool(k["temporal_attention"]),
        context_dim=k["context_dim"],
        num_image_tokens=k["num_tokens"],
        dropout=k["dropout"],
        adapter_depth=k["adapter_transformer_layers"],
        # The official DropPath leaves the reference slot and the IPI inputs of the all-dropped group alone.
        condition_dropout=ConditionDropoutConfig(
            p_all_zero=k["p_all_zero"],
            p_all_keep=k["p_all_keep"],
            p_drop_each=k["misc_dropout"],
            all_dropped_loses_reference=False,
            all_dropped_loses_ipi=False,
        ),
        ipi=ipi,
    )


def load_official_state_dict(
    model: AnimateXDenoiser, state_dict: Mapping[str, torch.Tensor], strict: bool = True
) -> tuple[list[str], list[str]]:
    """Load an official-layout state dict (Animate-X or UniAnimate) into ``model``.

    A state dict without any IPI key (UniAnimate's) leaves the IPI at its initialisation; its keys are
    returned as missing without failing ``strict``, and because the pose attention's output layers are
    zero-initialised the model computes UniAnimate's function. The keypoint position table is a fixed
    sinusoid: when its length differs from the model's (another ``seq_len``) it is recomputed, not loaded.

    Returns:
        ``(missing, unexpected)`` official keys.

    Raises:
        ValueError: a shape mismatch (names the key, expected and got), or with ``strict`` any other
            missing or unexpected key.
    """
    own = {to_official_key(k): k for k in model.state_dict()}
    own_state = model.state_dict()
    has_ipi_keys = any(is_ipi_key(k) for k in state_dict)
    native: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, value in state_dict.items():
        if key not in own:
            unexpected.append(key)
            continue
        expected = own_state[own[key]].shape
        if key == POSITION_TABLE_KEY and value.shape != expected:
            continue  # recomputed below; the official loader deletes it and retries in the same situation
        if value.shape != expected:
            raise ValueError(
                f"load_official_state_dict: shape mismatch for {key!r}: the model expects {tuple(expected)}, the "
                f"checkpoint has {tuple(value.shape)}; build the model with the checkpoint's configuration"
            )
        native[own[key]] = value
    missing = [k for k in own if own[k] not in native]
    tolerated = [k for k in missing if (not has_ipi_keys and is_ipi_key(k)) or k == POSITION_TABLE_KEY]
    hard_missing = [k for k in missing if k not in tolerated]
    if strict and (hard_missing or unexpected):
        raise ValueError(
            f"load_official_state_dict: {len(hard_missing)} missing key(s) {hard_missing[:5]} and "
            f"{len(unexpected)} unexpected key(s) {unexpected[:5]}; is this checkpoint for another configuration "
            "(e.g. model.denoiser.ipi.enabled, attn_scales, num_res_blocks)?"
        )
    model.load_state_dict(native, strict=False)
    if POSITION_TABLE_KEY in missing and POSITION_TABLE_KEY in own:
        table = model.ipi.keypoint_encoder.pos_embed.pos_table
        table.copy_(sinusoid_position_table(table.shape[1], table.shape[2]))
    return missing, unexpected


def official_forward(
    model: AnimateXDenoiser,
    x: torch.Tensor,
    t: torch.Tensor,
    image: torch.Tensor | None = None,
    local_image: torch.Tensor | None = None,
    dwpose: torch.Tensor | None = None,
    randomref: torch.Tensor | None = None,
    pose_embeddings: list[torch.Tensor] | tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Call ``model`` with the official forward's inputs and conventions (docs/official_release.md §1.3).

    Args:
        x: ``(b, 4, f, h, w)`` noisy latents.
        t: ``(b,)`` integer timesteps.
        image: ``(b, 1, context_dim)`` reference CLIP embedding (the entrance's extra token axis).
        local_image: ``(b, 3, f, H, W)`` in [0, 1].
        dwpose: ``(b, 3, f + 1, H, W)`` in [0, 1]; frame 0 is the reference pose.
        randomref: ``(b, 4, f, h, w)``; only frame 0 is read.
        pose_embeddings: ``[keypoints (b, f+1, 2, 18), driving CLIP (b*(f+1), 1, clip_dim)]``, rows (b f).

    Returns:
        ``(b, 4, f, h, w)``, what the official forward returns.
    """
    b, f = x.shape[0], x.shape[2]
    keypoints = driving_clip = None
    if pose_embeddings is not None:
        keypoints, clip = pose_embeddings
        driving_clip = clip.reshape(b, f + 1, clip.shape[-1])
    conditions = DenoiserConditions(
        image_embedding=None if image is None else image.reshape(b, -1),
        local_image=local_image,
        pose_images=dwpose,
        ref_latent=None if randomref is None else randomref[:, :, :1],
        pose_keypoints=keypoints,
        driving_clip=driving_clip,
    )
    return model(x, t, conditions)
