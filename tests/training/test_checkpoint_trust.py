"""No code execution from any checkpoint path (docs/reliability.md F20, G11): ``training/checkpoint_trust.py``.

Each test plants a checkpoint whose pickle carries a ``__reduce__`` payload that creates a canary file, and
reads it through one loading path of the project (the library code each path really calls: DeepSpeed's
checkpoint engine, Lightning's FSDP lazy loader, DCP's metadata reader, ``export``, ``model.init.checkpoint``,
``animate``'s weights). Every path refuses it and leaves no canary; the trust flag (the control) does run it,
so the payload is live. The CLI paths (``--ckpt_path`` local / URL / auto-resume) are in ``test_entry_points.py``.
"""

from __future__ import annotations

import pickle

import pytest
import torch
from support.canary import Canary, evil_checkpoint, planted_step

from animatex_train.training.checkpoint_trust import (
    CheckpointRefusedError,
    load_checkpoint_file,
    restricted_loading,
)


def test_weights_only_by_default_and_the_payload_is_live(tmp_path):
    canary = tmp_path / "canary"
    evil = evil_checkpoint(tmp_path / "evil.ckpt", canary)
    with pytest.raises(CheckpointRefusedError, match=r"evil\.ckpt.*--trust_checkpoint"):
        load_checkpoint_file(evil)
    assert not canary.exists()
    load_checkpoint_file(evil, trust=True)  # the control: trusting it runs the payload
    assert canary.exists()


def test_a_remote_checkpoint_is_never_trusted(tmp_path):
    with pytest.raises(CheckpointRefusedError, match="local files only"):
        with restricted_loading("http://127.0.0.1:1/evil.ckpt", trust=True):
            pass


def test_deepspeed_checkpoint_engine_is_restricted(tmp_path):
    """DeepSpeed's engine calls ``torch.load(weights_only=False)`` on ``mp_rank_00_model_states.pt`` (D1)."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    canary = tmp_path / "canary"
    evil = evil_checkpoint(tmp_path / "state.ckpt" / "checkpoint" / "mp_rank_00_model_states.pt", canary)
    with pytest.raises(CheckpointRefusedError, match="mp_rank_00_model_states"):
        with restricted_loading(evil.parent.parent):
            TorchCheckpointEngine().load(str(evil), map_location="cpu")
    assert not canary.exists()


def test_lightning_fsdp_full_checkpoint_loader_is_restricted(tmp_path):
    from lightning.pytorch.strategies import fsdp

    canary = tmp_path / "canary"
    evil = evil_checkpoint(tmp_path / "state.ckpt", canary)
    with pytest.raises(CheckpointRefusedError):
        with restricted_loading(evil):
            fsdp._lazy_load(evil)
    assert not canary.exists()
    with restricted_loading(evil.with_name("ok.ckpt")):
        torch.save({"state_dict": {"w": torch.ones(3)}}, evil.with_name("ok.ckpt"))
        assert fsdp._lazy_load(evil.with_name("ok.ckpt"))["state_dict"]["w"].sum() == 3


def test_fsdp_sharded_metadata_is_restricted_and_real_metadata_still_reads(tmp_path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    good = tmp_path / "good"
    dcp.save({"model": {"w": torch.arange(6.0).reshape(2, 3)}}, checkpoint_id=str(good))
    with restricted_loading(good):
        metadata = FileSystemReader(str(good)).read_metadata()
    assert "model.w" in metadata.state_dict_metadata

    canary = tmp_path / "canary"
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / ".metadata").write_bytes(pickle.dumps(Canary(canary)))
    with pytest.raises(CheckpointRefusedError, match="open"):
        with restricted_loading(evil):
            FileSystemReader(str(evil)).read_metadata()
    assert not canary.exists()


def test_export_refuses_a_planted_checkpoint(tmp_path):
    from animatex_train.training.export import ExportError, export_weights

    canary = tmp_path / "canary"
    step = planted_step(tmp_path / "checkpoints", canary)
    with pytest.raises(ExportError, match="--trust_checkpoint"):
        export_weights(step, tmp_path / "out.safetensors")
    assert not canary.exists()


def test_init_weights_and_animate_weights_refuse_a_payload(tmp_path):
    from animatex_train.inference.weights import load_denoiser
    from animatex_train.training.init_weights import read_state_dict

    canary = tmp_path / "canary"
    evil = evil_checkpoint(tmp_path / "animate-x.pth", canary)
    with pytest.raises(ValueError, match="model.init.checkpoint: .*animate-x.pth"):
        read_state_dict(evil)
    with pytest.raises(ValueError, match="animate-x.pth"):
        load_denoiser(str(evil), tiny=True)
    step = planted_step(tmp_path / "run" / "checkpoints", canary)
    with pytest.raises(Exception, match="--trust_checkpoint"):
        load_denoiser(str(step), tiny=True)
    assert not canary.exists()
