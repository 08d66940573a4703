"""Loading the denoiser for inference: our export, the official layout, a training checkpoint (EMA by default),
key reports by name, the position table for any frame count, and per-sample keypoint rows at batch 1."""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import save_file
from support.denoiser import tiny_inputs

from animatex_train.inference.weights import load_denoiser, resize_position_table
from animatex_train.models.official import to_official_state_dict


def _outputs(model, frames: int = 2) -> torch.Tensor:
    latents, t, cond = tiny_inputs(model.config, b=1, f=frames)
    with torch.no_grad():
        return model(latents, t, cond)


def test_every_format_loads_the_same_network(weights):
    expected = _outputs(weights.model)
    export = load_denoiser(str(weights.export))
    official = load_denoiser(str(weights.official), model_config=str(weights.model_config))
    assert export.kind == "export" and official.kind == "official"
    assert export.missing == [] and export.unexpected == [] and official.missing == []
    assert len(export.sha256) == 64 and export.sha256 != official.sha256
    for loaded in (export, official):
        assert torch.equal(_outputs(loaded.model), expected)


def test_training_checkpoint_loads_ema_by_default(weights):
    ema = load_denoiser(str(weights.training))
    raw = load_denoiser(str(weights.training), weights="raw")
    assert ema.kind == "training" and ema.weights == "ema" and raw.weights == "raw"
    assert torch.equal(_outputs(raw.model), _outputs(weights.model))
    shadow = ema.model.state_dict()
    assert all(torch.equal(shadow[k], v) for k, v in weights.ema_state.items())


def test_missing_keys_are_named_and_unexpected_ones_reported(weights, tmp_path):
    state = {k: v.contiguous() for k, v in weights.model.state_dict().items()}
    dropped = "time_embed.0.weight"
    partial = {k: v for k, v in state.items() if k != dropped}
    path = tmp_path / "partial.pth"
    torch.save({k: v.clone() for k, v in to_official_state_dict(partial).items()}, path)
    with pytest.raises(ValueError, match=r"lacks 1 weight\(s\).*time_embed\.0\.weight"):
        load_denoiser(str(path), model_config=str(weights.model_config))
    extra = tmp_path / "extra.safetensors"
    save_file({**state, "stray.weight": torch.zeros(2)}, str(extra))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_denoiser(str(extra), model_config=str(weights.model_config))
    assert loaded.unexpected == ["stray.weight"] and any("stray.weight" in str(w.message) for w in caught)


def test_official_checkpoint_runs_any_frame_count(weights):
    """The released table has 33 rows (32 frames + reference); it is a fixed sinusoid, rebuilt for longer clips."""
    loaded = load_denoiser(str(weights.official), model_config=str(weights.model_config))
    model = loaded.model
    rows = model.ipi.keypoint_encoder.pos_embed.pos_table.shape[1]
    frames = rows + 7
    with pytest.raises(ValueError, match="position table"):
        _outputs(model, frames)
    resize_position_table(model, frames + 1)
    longer = model.ipi.keypoint_encoder.pos_embed.pos_table
    assert longer.shape[1] == frames + 1
    assert torch.equal(longer[:, :rows], weights.model.ipi.keypoint_encoder.pos_embed.pos_table)  # same sinusoid
    assert torch.isfinite(_outputs(model, frames)).all()


def test_per_sample_rows_equal_the_official_rows_at_batch_one(weights):
    """Inference always pairs keypoint rows per sample: at batch 1 (the released inference) that is the official
    function bit for bit."""
    loaded = load_denoiser(str(weights.export))
    assert loaded.model.config.ipi.keypoint_row_order == "per_sample"
    official_rows = load_denoiser(str(weights.export)).model
    official_rows.ipi.keypoint_encoder.row_order = "official"
    assert torch.equal(_outputs(loaded.model, 3), _outputs(official_rows, 3))


def test_checkpoint_errors_name_the_flag(tmp_path):
    with pytest.raises(FileNotFoundError, match="--checkpoint"):
        load_denoiser(str(tmp_path / "nope.pth"))
    bare = tmp_path / "bare.safetensors"
    save_file({"x": torch.zeros(1)}, str(bare))
    with pytest.raises(ValueError, match="--model_config"):
        load_denoiser(str(bare))
