"""``animatex-train evaluate`` end to end on CPU: a tiny random denoiser, tiny VAE/CLIP, synthetic test videos with
their keypoints, random-weight metric networks by path; every protocol writes its three outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from networks import write_random_metric_weights

from animatex_train.cli import main
from animatex_train.data.synthetic.dataset import SyntheticDatasetConfig, write_synthetic_dataset
from animatex_train.eval.recipe import load_recipe
from animatex_train.models.config import tiny_denoiser_config
from animatex_train.models.unet import AnimateXDenoiser

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes" / "eval").glob("*.yaml"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("evaluate")
    config = SyntheticDatasetConfig(
        num_videos=3, num_val_videos=2, num_frames=16, height_px=64, width_px=64, styles=("teapot", "human", "fox")
    )
    write_synthetic_dataset(root / "videos", config)
    model = AnimateXDenoiser(tiny_denoiser_config()).eval()
    checkpoint = root / "tiny.safetensors"
    from dataclasses import asdict

    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(checkpoint),
        metadata={"animatex.denoiser_config": json.dumps(asdict(model.config)), "format": "pt"},
    )
    return root, checkpoint, write_random_metric_weights(root / "metric_weights")


def _args(root: Path, checkpoint: Path, weights: dict, recipe: str, out: Path) -> list[str]:
    return [
        "evaluate",
        "--recipe",
        str(REPO / "recipes" / "eval" / recipe),
        "--test_set",
        str(root / "videos"),
        "-o",
        str(out),
        "--checkpoint",
        str(checkpoint),
        "--tiny",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--no_progress",
        "--set",
        "animate.inputs.size=[64,64]",
        "--set",
        "metrics.frechet_method=eigh",
        *(f"--weights.{k}={v}" for k, v in weights.items()),
    ]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_eval_recipe_loads(recipe):
    assert load_recipe(recipe).protocol == recipe.stem


@pytest.mark.slow
def test_self_driven_writes_metrics_json_table_and_wandb(setup, tmp_path, monkeypatch):
    root, checkpoint, weights = setup
    monkeypatch.setenv("WANDB_MODE", "offline")
    torch.set_num_threads(2)
    assert main(_args(root, checkpoint, weights, "self_driven.yaml", tmp_path)) == 0
    report = json.loads((tmp_path / "metrics.json").read_text())
    metrics = report["metrics"]
    assert set(metrics) == {"psnr_star", "ssim", "l1", "lpips", "fid", "fid_vid", "fvd"}
    assert all(isinstance(v, float) for v in metrics.values()), metrics
    assert 0 < metrics["psnr_star"] < 100 and -1 <= metrics["ssim"] <= 1 and metrics["l1"] > 0
    assert min(metrics["fid"], metrics["fid_vid"], metrics["fvd"]) > 1e-3, metrics  # features depend on the videos
    assert report["counts"]["frame_pairs"] == 32 and report["counts"]["fid_vid_clips"] == {"gen": 2, "real": 2}
    assert [row["id"] for row in report["per_video"]] == ["synth_0001", "synth_0002"]
    assert all(row["n"] == 16 and "psnr_star" in row for row in report["per_video"])
    assert report["checkpoint"]["sha256"] and set(report["metric_weights"]) == {
        "fid_inception",
        "vgg16",
        "i3d",
        "r3d50",
    }
    assert report["protocol"]["protocol"] == "self_driven"
    table = (tmp_path / "metrics.md").read_text()
    assert "| PSNR*↑ | SSIM↑ | L1↓ | LPIPS↓ | FID↓ | FID-VID↓ | FVD↓ |" in table
    assert list((tmp_path / "wandb").glob("offline-run-*"))


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["cross_driven.yaml", "cross_identity.yaml"])
def test_cross_protocols_run(setup, tmp_path, recipe):
    root, checkpoint, weights = setup
    args = _args(root, checkpoint, weights, recipe, tmp_path) + ["--metrics", "fid_vid"]
    if recipe == "cross_driven.yaml":
        args[-1] = "psnr_star,l1"  # the ground-truth path; cheap
    assert main([*args, "--set", "save_videos=false"]) == 0
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert all(v is not None for v in report["metrics"].values()), report["metrics"]
    assert [row["partner"] for row in report["per_video"]] == ["synth_0002", "synth_0001"]


def test_missing_metric_weights_name_the_file_url_and_flag(setup, tmp_path, monkeypatch, capsys):
    root, checkpoint, weights = setup
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_hub"))
    args = [a for a in _args(root, checkpoint, weights, "self_driven.yaml", tmp_path) if "weights.i3d" not in a]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "i3d_pretrained_400.pt" in error and "--weights.i3d" in error and "https://" in error
