"""W&B tracking (docs/reliability.md §3.4): offline runs, one run id across resumes, redaction, no secret anywhere."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from slurm.harness import REPO, fit_args, offline_runs, run_env, tiny_dataset, wandb_config, wandb_history

from animatex_train.training.checkpoint import find_resume_checkpoint
from animatex_train.training.tracking import (
    REDACTED,
    RUN_ID_FILE,
    TrackingConfig,
    git_commit,
    has_wandb_credentials,
    pose_preview_grid,
    read_or_create_run_id,
    redact,
    resolve_mode,
)

CANARY = f"canary-{uuid.uuid4()}"


def test_redact_hides_secret_keys_and_known_secret_values():
    config = {
        "model": {"lr": 1e-3, "hf_token": "abc", "Password": "p"},
        "WANDB_API_KEY": "k",
        "client_secret_file": "s",
        "notes": f"run with {CANARY} inside",
        "layers": [{"api_key": "x"}],
        "key": "not a secret name",
        "num_tokens": 7,
        "empty_token": None,
    }
    out = redact(config, secrets=[CANARY])
    assert out["model"] == {"lr": 1e-3, "hf_token": REDACTED, "Password": REDACTED}
    assert out["WANDB_API_KEY"] == out["client_secret_file"] == out["layers"][0]["api_key"] == REDACTED
    assert out["notes"] == f"run with {REDACTED} inside"
    assert out["key"] == "not a secret name" and out["num_tokens"] == 7 and out["empty_token"] is None
    assert config["model"]["hf_token"] == "abc"  # a copy: the input is left alone


def test_mode_is_offline_without_credentials_online_with_them_and_explicit_choices_win(tmp_path):
    auto, netrc = TrackingConfig(), tmp_path / "netrc"
    assert resolve_mode(auto, {}, netrc_file=str(netrc)) == "offline"  # no key, no netrc file
    assert resolve_mode(auto, {"WANDB_API_KEY": "k"}) == "online"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password abcdefgh\n")
    netrc.chmod(0o600)
    assert has_wandb_credentials({}, netrc_file=str(netrc)) and resolve_mode(auto, {}, str(netrc)) == "online"
    assert not has_wandb_credentials({"WANDB_BASE_URL": "https://wandb.example.org"}, netrc_file=str(netrc))
    assert resolve_mode(auto, {"WANDB_API_KEY": "k", "WANDB_MODE": "offline"}) == "offline"
    assert resolve_mode(auto, {"WANDB_MODE": "dryrun"}) == "offline"
    assert resolve_mode(auto, {"WANDB_DISABLED": "true", "WANDB_API_KEY": "k"}) == "disabled"
    assert resolve_mode(TrackingConfig(mode="disabled"), {"WANDB_API_KEY": "k"}) == "disabled"
    assert resolve_mode(TrackingConfig(mode="offline"), {"WANDB_API_KEY": "k", "WANDB_MODE": "online"}) == "offline"
    with pytest.raises(ValueError, match="tracking.mode"):
        TrackingConfig(mode="cloud")


def test_run_id_file_is_created_once_and_reused(tmp_path):
    run_id = read_or_create_run_id(tmp_path / "run")
    assert run_id.isalnum() and len(run_id) == 8
    assert read_or_create_run_id(tmp_path / "run") == run_id
    (tmp_path / "run" / RUN_ID_FILE).write_text("../../etc\n")
    with pytest.raises(ValueError, match="not a W&B run id"):
        read_or_create_run_id(tmp_path / "run")


def test_git_commit_of_the_checkout_and_none_elsewhere(tmp_path):
    in_git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert git_commit() == (in_git.stdout.strip() if in_git.returncode == 0 else None)
    assert git_commit(tmp_path) is None


def test_pose_preview_grid_shows_reference_and_poses_of_each_sample():
    class FakeBatch:
        keys = ["a", "b", "c"]
        pose_images = torch.randint(0, 255, (3, 3, 9, 16, 16), dtype=torch.uint8)  # 8 driving frames
        ref_image = torch.randint(0, 255, (3, 3, 16, 16), dtype=torch.uint8)
        epi_applied = torch.tensor([True, False, True])

    grid, caption = pose_preview_grid(FakeBatch(), num_samples=2, num_frames=4)
    assert grid.shape == (32, 16 * 6, 3) and grid.dtype == np.uint8
    assert np.array_equal(grid[16:32, :16], FakeBatch.ref_image[1].permute(1, 2, 0).numpy())
    assert np.array_equal(grid[:16, 16:32], FakeBatch.pose_images[0, :, 0].permute(1, 2, 0).numpy())
    assert "a (EPI), b" in caption and "c" not in caption.split("rows:")[1]


def _fit(manifest: Path, run_dir: Path, max_steps: int) -> subprocess.CompletedProcess:
    """One tiny single-process fit, W&B offline, with an API key planted in its environment."""
    args = fit_args(manifest, run_dir, max_steps, validate=True)
    env = run_env(WANDB_API_KEY=CANARY)
    return subprocess.run(
        [sys.executable, "-m", "animatex_train", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A run of 4 steps, then the same command resumed to 6: (run dir, [first, second] completed processes)."""
    root = tmp_path_factory.mktemp("tracking")
    manifest, run_dir = tiny_dataset(root / "data"), root / "run"
    first = _fit(manifest, run_dir, 4)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    second = _fit(manifest, run_dir, 6)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return run_dir, [first, second]


def test_offline_run_holds_the_scalars_the_video_the_preview_and_the_config(two_runs):
    run_dir, _ = two_runs
    first = offline_runs(run_dir)[0]
    history = wandb_history(first)
    logged = {key for row in history for key in row}
    for key in (
        "train/loss",
        "train/grad_norm",
        "train/loss_t000-249",
        "lr-AdamW/base",
        "lr-AdamW/ipi",
        "perf/samples_per_s",
        "perf/data_wait_fraction",
        "val/loss",
        "trainer/global_step",
    ):
        assert key in logged, sorted(logged)
    assert any(row.get("val/sample/_type") == "videos" for row in history)
    assert any(row.get("train/epi_preview/_type") == "images/separated" for row in history)
    files = first.parent / "files" / "media"
    assert list(files.glob("videos/val/sample_*.mp4")) and list(files.glob("images/train/epi_preview_*.png"))
    config = wandb_config(first)
    resolved = config["resolved_config"]
    assert resolved["tracking"]["mode"] == "offline" and resolved["trainer"]["max_steps"] == 4
    commit = git_commit()
    assert config["git_commit"] == (commit or "unknown")
    assert config["config"]["denoiser"]["base_channels"] == 32  # the model's hparams
    assert (run_dir / "config.yaml").is_file() and (run_dir / "samples").is_dir()


def test_a_resumed_run_continues_the_same_wandb_run(two_runs):
    run_dir, _ = two_runs
    run_id = (run_dir / RUN_ID_FILE).read_text().strip()
    runs = offline_runs(run_dir)
    assert [p.name for p in runs] == [f"run-{run_id}.wandb"] * 2
    steps = [[row["trainer/global_step"] for row in wandb_history(p) if "train/loss" in row] for p in runs]
    assert steps[0] and steps[1] and max(steps[0]) < min(steps[1])  # the second picks up where the first ended


def _strings(value, out: list[str]) -> list[str]:
    """Every string (and bytes) inside an unpickled checkpoint: keys, values, hparams."""
    if isinstance(value, dict):
        for k, v in value.items():
            _strings(k, out)
            _strings(v, out)
    elif isinstance(value, (list, tuple, set)):
        for v in value:
            _strings(v, out)
    elif isinstance(value, (str, bytes)):
        out.append(value if isinstance(value, str) else value.decode("latin-1"))
    return out


def test_the_api_key_appears_nowhere(two_runs):
    run_dir, processes = two_runs
    for process in processes:
        assert CANARY not in process.stdout and CANARY not in process.stderr
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files) and any(p.name == "state.ckpt" for p in files)
    assert [str(p) for p in files if CANARY.encode() in p.read_bytes()] == []
    checkpoint = torch.load(find_resume_checkpoint(run_dir / "checkpoints"), map_location="cpu", weights_only=True)
    strings = _strings(checkpoint, [])
    assert strings and not [s for s in strings if CANARY in s]
    assert "hyper_parameters" in checkpoint and CANARY not in repr(checkpoint["hyper_parameters"])
