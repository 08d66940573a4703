"""The opt-in in-training evaluation (``eval/callback.py``): the clips it generates are scored as ``evaluate``
scores them (DisCo's paired metrics, pytorch-fid's FID), placeholders are skipped, it runs at the chosen
validations only, and it works inside a real ``fit`` with validation on."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from networks import write_random_metric_weights
from support.tiny_dataset import build_tiny_dataset, fit_args, fit_env, run_fit

from animatex_train.eval.callback import TrainingEvaluation
from animatex_train.eval.metrics.frechet import frechet_from_features
from animatex_train.eval.metrics.lpips_vgg import DiscoLPIPS
from animatex_train.eval.metrics.paired import l1_disco, psnr_star, ssim_disco


class _Module:
    """Renders fixed clips: generated = truth + a per-clip offset, so every metric has a known value."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        self.logged: list[dict[str, float]] = []
        self.rendered: list[list[str]] = []

    def render_validation_clips(self, batch, n):
        self.rendered.append(batch.keys[:n])
        return batch.generated[:n], batch.truth[:n]

    def log_dict(self, values, **kwargs):
        self.logged.append(dict(values))


def _batch(keys: list[str], valid: list[bool], seed: int) -> SimpleNamespace:
    rng = np.random.default_rng(seed)
    truth = torch.from_numpy(rng.integers(0, 256, (len(keys), 3, 32, 32, 3), dtype=np.uint8))
    noise = torch.from_numpy(rng.integers(-40, 41, truth.shape))
    generated = (truth.int() + noise).clamp(0, 255).to(torch.uint8)
    return SimpleNamespace(keys=keys, valid=torch.tensor(valid), batch_size=len(keys), truth=truth, generated=generated)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, str]:
    paths = write_random_metric_weights(tmp_path_factory.mktemp("metric_weights"), only=("fid_inception", "vgg16"))
    return {k: str(v) for k, v in paths.items()}


def test_scores_the_first_batches_like_evaluate_and_skips_placeholders(weights):
    callback = TrainingEvaluation(num_batches=2, samples_per_batch=2, every_n_validations=2, weights=weights)
    module = _Module()
    trainer = SimpleNamespace(sanity_checking=False, callbacks=[callback], strategy=SimpleNamespace(model=None))
    callback.setup(trainer, module, "fit")
    batches = [
        _batch(["a", "b", "c"], [True, True, True], 0),
        _batch(["d", "e", "f"], [True, False, True], 1),
        _batch(["g", "h", "i"], [True, True, True], 2),
    ]

    def validation(sanity: bool = False) -> None:
        trainer.sanity_checking = sanity
        callback.on_validation_epoch_start(trainer, module)
        for index, batch in enumerate(batches):
            callback.on_validation_batch_end(trainer, module, None, batch, index)
        callback.on_validation_epoch_end(trainer, module)

    validation(sanity=True)  # the sanity check is never scored
    assert module.rendered == [] and module.logged == []
    validation()
    # Two batches, two clips each; "e" is a placeholder row: rendered (every rank renders alike), not scored.
    assert module.rendered == [["a", "b"], ["d", "e"]]
    scored = [(b, i) for b in batches[:2] for i in range(2) if b.valid[i]]
    pairs = [(b.generated[i, t].numpy(), b.truth[i, t].numpy()) for b, i in scored for t in range(3)]
    lpips = DiscoLPIPS(weights["vgg16"])
    expected = {
        "eval/psnr_star": np.mean([psnr_star(g, t) for g, t in pairs]),
        "eval/ssim": np.mean([ssim_disco(g, t) for g, t in pairs]),
        "eval/l1": np.mean([l1_disco(g, t) for g, t in pairs]),
        "eval/lpips": np.mean(
            [float(lpips(torch.from_numpy(g)[None], torch.from_numpy(t)[None])[0]) for g, t in pairs]
        ),
    }
    inception = callback.suite.frames.network
    features = {
        side: inception(torch.from_numpy(np.stack([p[k] for p in pairs]))).double().numpy()
        for k, side in ((0, "gen"), (1, "real"))
    }
    expected["eval/fid"] = frechet_from_features(features["gen"], features["real"], "eigh")
    (logged,) = module.logged
    assert logged.keys() == expected.keys()
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value, rel=1e-6), key
    validation()  # every 2nd validation: this one is skipped
    assert len(module.logged) == 1
    validation()  # scored again from a fresh state: the same clips give the same numbers
    assert module.logged[1] == pytest.approx(logged, rel=1e-9)


def test_refuses_what_it_cannot_compute(weights, tmp_path):
    with pytest.raises(ValueError, match=r"init_args.metrics: \['fvd'\] cannot be computed during training"):
        TrainingEvaluation(metrics=["psnr_star", "fvd"])
    with pytest.raises(ValueError, match=r"init_args.weights: unknown \['inception'\]"):
        TrainingEvaluation(weights={"inception": "x.pth"})
    callback = TrainingEvaluation(metrics=["fid"], weights={"fid_inception": str(tmp_path / "missing.pth")})
    with pytest.raises(FileNotFoundError, match=r"init_args.weights.fid_inception .*missing.pth does not exist"):
        callback.setup(None, _Module(), "fit")


@pytest.mark.slow
def test_logs_the_metrics_during_a_real_fit(weights, tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    build_tiny_dataset(data, num_train_shards=1, per_shard=2, frames=6, size=(32, 32))
    overlay = tmp_path / "evaluation.yaml"
    evaluation = {
        "class_path": "animatex_train.eval.callback.TrainingEvaluation",
        "init_args": {
            "num_batches": 1,
            "samples_per_batch": 1,
            "weights": weights,
            "metrics": ["psnr_star", "l1", "lpips", "fid"],
        },
    }
    run_metrics = {"class_path": "animatex_train.training.run_metrics.RunMetrics"}  # writes metrics.jsonl
    overlay.write_text(yaml.safe_dump({"trainer": {"callbacks": [evaluation, run_metrics]}}))
    args = [
        *fit_args(data, run, max_steps=2, validate=True),
        "--config",
        str(overlay),
        "--data.num_frames",
        "4",
        "--trainer.limit_val_batches",
        "1",
        "--model.validation.sample_clips",
        "false",
    ]
    run_fit(args, fit_env(), timeout_s=300)
    records = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    validation = [r["metrics"] for r in records if r.get("event") == "validation"][-1]
    assert 0 < validation["eval/psnr_star"] < 100 and validation["eval/l1"] > 0 and validation["eval/lpips"] > 0
    # one clip of 4 frames on each side: FID is defined (>= 2 samples) and finite
    assert np.isfinite(validation["eval/fid"]), validation
