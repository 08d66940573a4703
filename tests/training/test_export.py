"""``animatex-train export``: checkpoint -> safetensors (EMA or raw, fp32 or bf16) and the official layout, and
back into a model through ``model.init.checkpoint``. (ZeRO checkpoints: ``test_strategies.py``.)"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from support.denoiser import tiny_inputs
from support.numerics_runs import PROBED_DDP_ARGS
from support.tiny_dataset import TINY_RECIPE, probed_run, shared_dataset

from animatex_train.cli.export import main as export_main
from animatex_train.cli.lightning import AnimateXCLI
from animatex_train.models.config import DenoiserConfig
from animatex_train.models.official import load_official_state_dict
from animatex_train.models.unet import AnimateXDenoiser
from animatex_train.training.checkpoint import STATE, commit_checkpoint, step_dir_name
from animatex_train.training.export import ExportError, export_weights, official_layout
from animatex_train.training.init_weights import InitConfig, load_initial_weights

HERE = Path(__file__).resolve().parent
REFERENCE = HERE.parent / "fixtures" / "reference"
STEPS = 4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # other torch processes share the 2 cores: 2 threads would be far slower
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """The 2-process DDP run of the tiny recipe (shared with test_strategies.py), its checkpoint and config."""
    run = probed_run(tmp_path_factory, "ddp", PROBED_DDP_ARGS, steps=STEPS)
    checkpoint = torch.load(run / "checkpoints" / step_dir_name(STEPS) / STATE, weights_only=True)
    config = DenoiserConfig(**checkpoint["hyper_parameters"]["config"]["denoiser"])
    return {"data": shared_dataset(tmp_path_factory), "run": run, "config": config, "checkpoint": checkpoint}


def _model(config: DenoiserConfig, state: dict[str, torch.Tensor] | None = None) -> AnimateXDenoiser:
    model = AnimateXDenoiser(config).eval()
    if state is not None:
        model.load_state_dict(state)
    return model


def _outputs(model: AnimateXDenoiser) -> torch.Tensor:
    latents, t, cond = tiny_inputs(model.config, b=1, f=2)
    with torch.no_grad():
        return model(latents, t, cond)


def _raw_state(trained: dict) -> dict[str, torch.Tensor]:
    return {k.removeprefix("denoiser."): v for k, v in trained["checkpoint"]["state_dict"].items()}


def test_raw_export_round_trips_through_init_checkpoint(trained, tmp_path):
    out = tmp_path / "raw.safetensors"
    export_weights(trained["run"] / "checkpoints", out, weights="raw")
    expected = _outputs(_model(trained["config"], _raw_state(trained)))
    # the way a recipe uses it: model.init.checkpoint, through the CLI (nothing runs)
    data = trained["data"] / "manifest.json"
    cli = AnimateXCLI(
        args=[
            "--config",
            str(TINY_RECIPE),
            "--model.init.checkpoint",
            str(out),
            "--data.train",
            f"[{{manifest: {data}}}]",
            "--data.anchor_pool",
            "null",
            "--model.empty_prompt_cache",
            "null",
        ],
        run=False,
    )
    assert torch.equal(_outputs(cli.model.denoiser.eval()), expected)
    gathered = load_file(str(trained["run"] / "probe" / "final_fp32.safetensors"))
    exported = load_file(str(out))
    assert exported.keys() == gathered.keys() and all(torch.equal(exported[k], gathered[k]) for k in gathered)


def test_ema_export_differs_from_raw_and_carries_provenance(trained, tmp_path):
    raw, ema = tmp_path / "raw.safetensors", tmp_path / "ema.safetensors"
    export_weights(trained["run"] / "checkpoints", raw, weights="raw")
    export_weights(trained["run"] / "checkpoints" / step_dir_name(STEPS) / STATE, ema, weights="ema")
    raw_t, ema_t = load_file(str(raw)), load_file(str(ema))
    shadow = load_file(str(trained["run"] / "probe" / "ema.safetensors"))
    assert all(torch.equal(ema_t[k], shadow[k]) for k in shadow)
    assert any(not torch.equal(ema_t[k], raw_t[k]) for k in shadow)  # decay 0.9 < 1: the EMA lags
    buffers = set(raw_t) - set(shadow)  # buffers come from the raw state
    assert buffers and all(torch.equal(ema_t[k], raw_t[k]) for k in buffers)
    model = AnimateXDenoiser(trained["config"]).eval()
    load_initial_weights(model, InitConfig(checkpoint=str(ema)))
    assert not torch.equal(_outputs(model), _outputs(_model(trained["config"], raw_t)))
    with safe_open(str(ema), "pt") as f:
        meta = f.metadata()
    assert meta["animatex.weights"] == "ema" and meta["animatex.step"] == str(STEPS)
    assert meta["animatex.source_checkpoint"].endswith(f"{step_dir_name(STEPS)}/{STATE}")
    assert meta["animatex.ema_decay"] == "0.9" and int(meta["animatex.ema_num_updates"]) > 0
    assert DenoiserConfig(**json.loads(meta["animatex.denoiser_config"])) == trained["config"]


def test_bf16_export(trained, tmp_path):
    out = tmp_path / "bf16.safetensors"
    export_weights(trained["run"] / "checkpoints", out, weights="raw", dtype="bf16")
    tensors, raw = load_file(str(out)), _raw_state(trained)
    assert all(v.dtype == torch.bfloat16 for v in tensors.values())
    assert all(torch.equal(tensors[k], raw[k].to(torch.bfloat16)) for k in raw)
    model = AnimateXDenoiser(trained["config"])
    load_initial_weights(model, InitConfig(checkpoint=str(out)))  # loads into the fp32 model
    assert model.time_embed[0].weight.dtype == torch.float32


def test_official_layout_of_the_paper_config_matches_the_reference_keys():
    with torch.device("meta"):
        state = AnimateXDenoiser(DenoiserConfig()).state_dict()
    layout = {k: tuple(v.shape) for k, v in official_layout(state).items()}
    rows = (REFERENCE / "animatex_unet_keys.tsv").read_text().splitlines()[1:]
    reference = {
        key: tuple(int(s) for s in shape.strip("[]").split(",") if s.strip())
        for key, shape, _ in (row.split("\t") for row in rows)
    }
    assert len(reference) == 2100
    assert layout == reference


def test_official_export_of_a_trained_checkpoint_loads_into_the_official_layout(trained, tmp_path):
    out, official = tmp_path / "raw.safetensors", tmp_path / "animate-x.pth"
    export_weights(trained["run"] / "checkpoints", out, weights="raw", official=official)
    state = torch.load(official, weights_only=True)  # a plain dict of tensors, as the official loader expects
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    assert any("temopral_conv" in k for k in state) and any(k.startswith("pose_embedding_before.") for k in state)
    model = AnimateXDenoiser(trained["config"]).eval()
    missing, unexpected = load_official_state_dict(model, state, strict=True)
    assert not missing and not unexpected
    expected = _outputs(_model(trained["config"], _raw_state(trained)))
    assert torch.equal(_outputs(model), expected)
    via_init = AnimateXDenoiser(trained["config"]).eval()
    load_initial_weights(via_init, InitConfig(checkpoint=str(official)))  # detected as the official layout
    assert torch.equal(_outputs(via_init), expected)


def test_cli_exports_and_refuses_incomplete_or_unsafe_checkpoints(trained, tmp_path, capsys):
    out = tmp_path / "cli.safetensors"
    assert export_main([str(trained["run"] / "checkpoints"), "-o", str(out), "--weights", "raw"]) == 0
    assert f"raw weights of step {STEPS}" in capsys.readouterr().out and out.is_file()
    with pytest.raises(SystemExit):
        export_main([str(trained["run"] / "checkpoints"), "-o", str(tmp_path / "x.pt")])
    # an interrupted save: no COMPLETE marker
    broken = tmp_path / "ckpts" / step_dir_name(9)
    broken.mkdir(parents=True)
    (broken / STATE).write_bytes(b"partial")
    assert export_main([str(broken), "-o", str(tmp_path / "y.safetensors")]) == 2
    assert "no COMPLETE marker" in capsys.readouterr().err
    # a committed checkpoint that holds a pickled object: refused without unpickling it
    tmp = tmp_path / "evil" / (step_dir_name(1) + ".tmp")
    tmp.mkdir(parents=True)
    (tmp / STATE).write_bytes(pickle.dumps({"state_dict": {}, "payload": _NotATensor()}))
    commit_checkpoint(tmp, tmp.with_suffix(""), 1, keep_last=2)
    with pytest.raises(ExportError, match="other than tensors"):
        export_weights(tmp_path / "evil", tmp_path / "z.safetensors", weights="raw")
    assert not _NotATensor.unpickled


class _NotATensor:
    unpickled = False

    def __setstate__(self, state):
        _NotATensor.unpickled = True
