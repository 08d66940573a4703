"""``config_from_official`` accepts what the official constructor accepts (it swallows **kwargs, never reaches
``attn_scales`` entries deeper than its levels)."""

from __future__ import annotations

import warnings

import pytest

from animatex_train.models.official import config_from_official
from animatex_train.models.unet import AnimateXDenoiser

SMALL = dict(
    dim=32,
    dim_mult=[1, 2],
    num_res_blocks=1,
    head_dim=16,
    num_heads=2,
    context_dim=64,
    out_dim=4,
    DwposeEncoder=dict(d_model=64, nhead=4, num_encoder_layers=1, dim_feedforward=64),
    Resampler=dict(dim=64, depth=1, dim_head=16, heads=4, output_dim=64, embedding_dim=64),
)


def test_attn_scales_deeper_than_the_unet_are_never_reached():
    # The official class default [1/2, 1/4, 1/8] on a 2-level UNet: only 1/2 exists; 1/4, 1/8 are never tested.
    deep = config_from_official({**SMALL, "attn_scales": [1 / 2, 1 / 4, 1 / 8]})
    assert deep.attn_scales == [0.5]
    shallow = config_from_official({**SMALL, "attn_scales": [0.5]})
    assert deep == shallow
    keys = AnimateXDenoiser(deep).state_dict().keys()
    assert keys == AnimateXDenoiser(shallow).state_dict().keys()
    # a released-style list on a 2-level UNet keeps the levels it has
    assert config_from_official({**SMALL, "attn_scales": [1.0, 0.5, 0.25]}).attn_scales == [1.0, 0.5]
    assert config_from_official({**SMALL, "attn_scales": [0.3, 0.125]}).attn_scales == []


def test_unknown_and_shape_only_arguments_are_accepted_with_a_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = config_from_official({**SMALL, "attn_scales": [1.0], "some_future_flag": 3, "no_hand": False})
    messages = " ".join(str(w.message) for w in caught)
    assert "some_future_flag" in messages and "no_hand=False" in messages
    assert config == config_from_official({**SMALL, "attn_scales": [1.0]})


def test_unrepresentable_arguments_still_name_the_key():
    with pytest.raises(ValueError, match="use_image_dataset=True"):
        config_from_official({**SMALL, "use_image_dataset": True})
