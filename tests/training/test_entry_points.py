"""Every entry point accepts a checkpoint of ours, and none runs code hidden in a foreign one.

One 2-step ``fit`` of the tiny recipe writes ``step-000000002``; then ``fit --ckpt_path`` (explicit, into a new
run directory), ``validate --ckpt_path`` (a run's ``checkpoints/`` folder, as ``slurm/eval.sbatch`` passes a
``state.ckpt``), ``export`` and ``animate``'s weight loader (the checkpoint and the export) all load it. The
hyperparameters saved in the checkpoint are deliberately not re-parsed (``cli/lightning.py``).

Canaries (docs/reliability.md F20): a checkpoint whose pickle would create a file, given to ``validate`` over HTTP,
to ``fit --ckpt_path`` as a local file, and planted (with a forged manifest) for the automatic resume: each
run exits non-zero with one ``error:`` line naming the file, and the canary never appears.
"""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import pytest
import torch
from support.canary import evil_checkpoint, planted_step
from support.tiny_dataset import build_deepspeed_cpu_ops, build_tiny_dataset, fit_args, fit_env, run_fit

from animatex_train.training.checkpoint import STATE, find_resume_checkpoint, step_dir_name

STEPS = 2


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("entry")
    build_tiny_dataset(root / "data")
    run_fit(fit_args(root / "data", root / "run", max_steps=STEPS, every_n_steps=STEPS), fit_env(), timeout_s=600)
    return {"root": root, "data": root / "data", "run": root / "run"}


def _validate_args(run: dict[str, Path], run_dir: Path, ckpt: str) -> list[str]:
    args = fit_args(run["data"], run_dir, max_steps=STEPS, validate=True)
    return ["validate", *args[1:], "--trainer.limit_val_batches", "1", "--ckpt_path", ckpt]


def test_fit_resumes_from_an_explicit_checkpoint_folder(run, tmp_path):
    step_dir = run["run"] / "checkpoints" / step_dir_name(STEPS)
    run_fit(
        [*fit_args(run["data"], tmp_path / "run2", max_steps=STEPS + 1), "--ckpt_path", str(step_dir)],
        fit_env(),
        timeout_s=600,
    )
    resumed = find_resume_checkpoint(tmp_path / "run2" / "checkpoints")
    assert resumed is not None and resumed.parent.name == step_dir_name(STEPS + 1)
    # one step trained on top of the two restored ones: the counters came from the checkpoint
    assert torch.load(resumed, weights_only=True)["global_step"] == STEPS + 1


def test_validate_loads_a_runs_checkpoints_folder(run, tmp_path):
    output = run_fit(_validate_args(run, tmp_path / "eval", str(run["run"] / "checkpoints")), fit_env(), timeout_s=600)
    assert "val/loss" in output, output[-3000:]


def test_export_and_animate_load_the_checkpoint(run, tmp_path):
    from animatex_train.cli.export import main as export_main
    from animatex_train.inference.weights import load_denoiser

    out = tmp_path / "denoiser.safetensors"
    assert export_main([str(run["run"] / "checkpoints"), "--output", str(out), "--weights", "raw"]) == 0
    from_checkpoint = load_denoiser(str(run["run"] / "checkpoints"), weights="raw")
    from_export = load_denoiser(str(out))
    state = from_checkpoint.model.state_dict()
    assert state.keys() == from_export.model.state_dict().keys()
    assert all(torch.equal(v, from_export.model.state_dict()[k]) for k, v in state.items())


@pytest.fixture
def http_dir(tmp_path):
    """An HTTP server on 127.0.0.1 serving ``tmp_path / 'www'``; yields (folder, base URL)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def _fails_with_one_error_line(args: list[str], name: str) -> str:
    with pytest.raises(AssertionError, match="exit code") as failure:
        run_fit(args, fit_env(), timeout_s=600)
    output = str(failure.value)
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and name in errors[0], output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    return errors[0]


def test_validate_never_unpickles_a_remote_checkpoint(run, tmp_path, http_dir):
    www, url = http_dir
    canary = tmp_path / "canary"
    evil_checkpoint(www / "fit.ckpt", canary)
    line = _fails_with_one_error_line(_validate_args(run, tmp_path / "eval", f"{url}/fit.ckpt"), "fit.ckpt")
    assert "remote" in line
    assert not canary.exists()


def test_fit_refuses_a_foreign_local_checkpoint(run, tmp_path):
    canary = tmp_path / "canary"
    evil = evil_checkpoint(tmp_path / "foreign.ckpt", canary)
    args = [*fit_args(run["data"], tmp_path / "run", max_steps=STEPS), "--ckpt_path", str(evil)]
    assert "--trust_checkpoint" in _fails_with_one_error_line(args, "foreign.ckpt")
    assert not canary.exists()


def test_auto_resume_refuses_a_planted_checkpoint(run, tmp_path):
    canary = tmp_path / "canary"
    step = planted_step(tmp_path / "run" / "checkpoints", canary)
    _fails_with_one_error_line(fit_args(run["data"], tmp_path / "run", max_steps=STEPS), str(step / STATE))
    assert not canary.exists()


DEEPSPEED = [
    "--trainer.devices",
    "2",
    "--trainer.strategy",
    "animatex_train.training.strategy.AnimateXDeepSpeedStrategy",
    "--trainer.strategy.stage",
    "2",
]


@pytest.mark.slow
def test_deepspeed_resumes_its_own_checkpoint_and_refuses_a_planted_folder(run, tmp_path):
    """ZeRO-2 on 2 ranks: our own checkpoint resumes with no flag (read weights-only plus the DeepSpeed
    allowlist); a DeepSpeed folder whose ``mp_rank_00_model_states.pt`` carries a payload (D1) is refused."""
    build_deepspeed_cpu_ops()
    ds_run = tmp_path / "ds"
    run_fit(
        [*fit_args(run["data"], ds_run, max_steps=STEPS, every_n_steps=STEPS), *DEEPSPEED], fit_env(), timeout_s=600
    )
    output = run_fit([*fit_args(run["data"], ds_run, max_steps=STEPS + 1), *DEEPSPEED], fit_env(), timeout_s=600)
    assert "resuming from" in output or find_resume_checkpoint(ds_run / "checkpoints") is not None
    assert find_resume_checkpoint(ds_run / "checkpoints").parent.name == step_dir_name(STEPS + 1)

    canary = tmp_path / "canary"
    evil = tmp_path / "evil_ds"
    evil.mkdir()
    (evil / "latest").write_text("checkpoint")  # DeepSpeed's tag file
    evil_checkpoint(evil / "checkpoint" / "mp_rank_00_model_states.pt", canary)
    args = [*fit_args(run["data"], tmp_path / "ds2", max_steps=STEPS), *DEEPSPEED, "--ckpt_path", str(evil)]
    with pytest.raises(AssertionError, match="exit code") as failure:
        run_fit(args, fit_env(), timeout_s=600)
    errors = [line for line in str(failure.value).splitlines() if line.startswith("error:")]
    assert errors and all("mp_rank_00_model_states.pt" in line for line in errors), str(failure.value)[-3000:]
    assert not canary.exists()
