"""``animatex-train ablate``: list, collate from run directories, local campaigns, Slurm submission."""

from __future__ import annotations

import csv
import json
import shlex
import sys
from pathlib import Path

import pytest
import yaml
from support.tiny_dataset import REPO_ROOT as REPO
from support.tiny_dataset import TINY_RECIPE, build_tiny_dataset

from animatex_train.cli.ablate import main as ablate_main
from animatex_train.cli.anchor_pool import main as anchor_pool_main
from animatex_train.launch import local_campaign
from animatex_train.launch.campaign import BY_NAME, CAMPAIGN, CampaignError
from animatex_train.launch.collate import collate, markdown_table, write_tables


def ledger(run_dir: Path, losses: dict[int, float], rank: int = 0, session: str = "s1") -> None:
    path = run_dir / "ledger" / f"rank{rank}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for step, loss in losses.items():
            f.write(json.dumps({"session": session, "step": step, "rank": rank, "keys": ["a"], "loss": loss}) + "\n")


def metrics(run_dir: Path, *records: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "metrics.jsonl").open("a") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def state(run_dir: Path, **values) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "ablation.json").write_text(json.dumps(values))


def test_list_prints_every_ablation(capsys):
    assert ablate_main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(a.name in out for a in CAMPAIGN) and "enable_add" in out
    assert ablate_main(["--list", "--only", "pa,kv_q"]) == 0
    out = capsys.readouterr().out
    assert "placement" in out and "wo_ipi" not in out


def test_unknown_ablation_is_an_error(capsys):
    assert ablate_main(["--only", "wo_ipi,wo_foo", "--recipe", str(TINY_RECIPE), "--dry_run"]) == 2
    assert "wo_foo" in capsys.readouterr().err


def test_collate_reads_the_run_directories(tmp_path, capsys):
    out = tmp_path / "campaign"
    # full: finished locally; two ranks, and step 4 trained twice (a resume): the newer line counts.
    full = out / "full"
    ledger(full, {1: 1.0, 2: 0.8, 3: 0.6, 4: 9.0}, rank=0)
    ledger(full, {1: 1.0, 2: 0.6, 3: 0.4, 4: 9.0}, rank=1)
    ledger(full, {4: 0.4, 5: 0.2}, rank=0, session="s2")
    ledger(full, {4: 0.2, 5: 0.2}, rank=1, session="s2")
    metrics(
        full,
        {"event": "validation", "step": 5, "metrics": {"val/loss": 0.5, "train/loss": 0.2}},
        {"event": "fit_end", "step": 5, "max_steps": 5, "wall_s": 3.0, "metrics": {"val/loss": 0.5}},
    )
    state(full, status="finished", wall_s=12.5, max_steps=5)
    # wo_ipi: a Slurm run (no ablation.json from a local campaign) that finished; no ledger: the logged loss.
    metrics(
        out / "wo_ipi",
        {"event": "validation", "step": 5, "metrics": {"val/loss": 0.75}},
        {"event": "fit_end", "step": 5, "max_steps": 5, "wall_s": 7.0, "metrics": {"train/loss": 0.3}},
    )
    # wo_epi: failed after two steps.
    ledger(out / "wo_epi", {1: 2.0, 2: 1.0})
    state(out / "wo_epi", status="failed", returncode=1, wall_s=4.0, error="RuntimeError: boom")
    # pa: stopped early by Slurm; kv_q: never ran.
    metrics(out / "pa", {"event": "fit_end", "step": 3, "max_steps": 5, "wall_s": 2.0, "metrics": {}})

    rows = {r.name: r for r in collate(out, [BY_NAME[n] for n in ("wo_ipi", "pa", "kv_q", "wo_epi", "full")], 3)}
    assert list(rows) == ["wo_ipi", "pa", "kv_q", "wo_epi", "full"]  # campaign order
    f = rows["full"]
    assert (f.status, f.steps, f.val_loss, f.val_delta, f.wall_s) == ("finished", 5, 0.5, 0.0, 12.5)
    assert f.train_loss == pytest.approx((0.5 + 0.3 + 0.2) / 3)  # steps 3-5, mean over ranks
    w = rows["wo_ipi"]
    assert (w.status, w.steps, w.train_loss, w.val_loss, w.wall_s) == ("finished", 5, 0.3, 0.75, 7.0)
    assert w.val_delta == pytest.approx(0.25) and w.changes == "model.denoiser.ipi.enabled=False"
    e = rows["wo_epi"]
    assert (e.status, e.steps, e.train_loss, e.val_loss, e.error) == ("failed", 2, 1.5, None, "RuntimeError: boom")
    assert rows["pa"].status == "stopped at step 3" and rows["kv_q"].status == "not run"

    md, csv_path = write_tables(out, list(rows.values()), 3)
    text = md.read_text()
    assert text == markdown_table(list(rows.values()), 3) and text.count("\n") == 2 + 5
    assert "| full | Animate-X (full) |" in text and "failed: RuntimeError: boom" in text and "+2.50e-01" in text
    table = list(csv.DictReader(csv_path.open()))
    assert [r["name"] for r in table] == list(rows) and float(table[0]["val_loss"]) == 0.75
    assert table[2]["val_loss"] == "" and table[3]["status"] == "failed"

    assert ablate_main(["collate", "--out", str(out), "--only", "full,wo_epi"]) == 0
    printed = capsys.readouterr().out
    assert "| full |" in printed and "| wo_epi |" in printed and "| pa |" not in printed


def test_a_failed_run_is_reported_and_the_others_continue(tmp_path, monkeypatch, capsys):
    runs = []

    def fake_run_fit(command, log, echo, on_poll):
        run_dir = Path(next(a for a in command if a.startswith("--trainer.default_root_dir=")).split("=", 1)[1])
        runs.append(run_dir.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        if run_dir.name == "wo_lq":
            log.write_text("Traceback (most recent call last):\nValueError: model.ipi broke\nsome teardown noise\n")
            return 1
        ledger(run_dir, {1: 0.5, 2: 0.25})
        return 0

    monkeypatch.setattr(local_campaign, "run_fit", fake_run_fit)
    monkeypatch.setattr(local_campaign, "data_overrides", lambda *a: [])
    argv = [
        "--local",
        "--recipe",
        str(TINY_RECIPE),
        "--only",
        "wo_ipi,wo_lq,wo_dq",
        "--max_steps",
        "2",
        "--out",
        str(tmp_path),
    ]
    assert ablate_main(argv) == 1
    assert runs == ["wo_ipi", "wo_lq", "wo_dq"]
    rows = {r["name"]: r for r in csv.DictReader((tmp_path / "ablations.csv").open())}
    assert rows["wo_lq"]["status"] == "failed" and rows["wo_lq"]["error"] == "ValueError: model.ipi broke"
    assert rows["wo_ipi"]["status"] == rows["wo_dq"]["status"] == "finished"
    assert "failed: ValueError: model.ipi broke" in capsys.readouterr().out
    # Rerunning runs only the failed one; a later --max_steps reruns (resumes) the finished ones too.
    runs.clear()
    assert ablate_main(argv) == 1 and runs == ["wo_lq"]
    assert json.loads((tmp_path / "wo_lq" / "ablation.json").read_text())["attempts"] == 2
    runs.clear()
    assert ablate_main([*argv[:-4], "--max_steps", "3", "--out", str(tmp_path)]) == 1
    assert runs == ["wo_ipi", "wo_lq", "wo_dq"]


def test_eval_recipe_evaluates_each_finished_run_once(tmp_path, monkeypatch, capsys):
    """``--eval_recipe``: every finished run is evaluated into ``<run>/eval`` (a failed run is not), the metrics table
    is printed, a failed evaluation is recorded and retried on the next invocation, and Slurm campaigns refuse."""
    calls = []
    broken_eval = {"wo_lq"}

    def fake_run_fit(command, log, echo, on_poll):
        log.parent.mkdir(parents=True, exist_ok=True)
        if "evaluate" in command:
            out_dir = Path(command[command.index("-o") + 1])
            calls.append(
                (
                    "evaluate",
                    out_dir.parent.name,
                    command[command.index("--checkpoint") + 1],
                    command[command.index("--recipe") + 1],
                    command[-1],
                )
            )
            if out_dir.parent.name in broken_eval:
                log.write_text("error: --test_set: no such file t.jsonl\n")
                return 2
            out_dir.mkdir(parents=True)
            values = {
                "psnr_star": 14.0,
                "ssim": 0.5,
                "l1": 1e-4,
                "lpips": 0.4,
                "fid": 30.0,
                "fid_vid": 40.0,
                "fvd": 500.0,
            }
            (out_dir / "metrics.json").write_text(
                json.dumps({"metrics": values, "protocol": {"protocol": "cross_driven"}})
            )
            return 0
        run_dir = Path(next(a for a in command if a.startswith("--trainer.default_root_dir=")).split("=", 1)[1])
        calls.append(("fit", run_dir.name))
        if run_dir.name == "wo_dq":
            return 1
        ledger(run_dir, {1: 0.5, 2: 0.25})
        return 0

    monkeypatch.setattr(local_campaign, "run_fit", fake_run_fit)
    monkeypatch.setattr(local_campaign, "data_overrides", lambda *a: [])
    recipe = REPO / "recipes" / "eval" / "cross_driven.yaml"
    argv = [
        "--local",
        "--recipe",
        str(TINY_RECIPE),
        "--only",
        "wo_ipi,wo_lq,wo_dq",
        "--max_steps",
        "2",
        "--out",
        str(tmp_path),
        "--eval_recipe",
        str(recipe),
        "--eval_arg=--tiny",
    ]
    assert ablate_main(argv) == 1  # wo_dq's training and wo_lq's evaluation failed
    assert calls == [
        ("fit", "wo_ipi"),
        ("fit", "wo_lq"),
        ("fit", "wo_dq"),
        ("evaluate", "wo_ipi", str(tmp_path / "wo_ipi" / "checkpoints"), str(recipe), "--tiny"),
        ("evaluate", "wo_lq", str(tmp_path / "wo_lq" / "checkpoints"), str(recipe), "--tiny"),
    ]
    printed = capsys.readouterr().out
    table = {line.split("|")[1].strip(): line for line in printed.splitlines() if line.startswith("| wo_")}
    assert "14.00 (13.30)" in table["wo_ipi"] and "not evaluated" in table["wo_lq"]
    assert "wo_lq: evaluation failed (exit 2)" in printed and "error: --test_set: no such file" in printed
    assert (tmp_path / "ablation_metrics.md").read_text() in printed
    states = {n: json.loads((tmp_path / n / "ablation.json").read_text()) for n in ("wo_ipi", "wo_lq", "wo_dq")}
    assert states["wo_ipi"]["eval_status"] == "finished" and states["wo_lq"]["eval_status"] == "failed"
    assert "eval_status" not in states["wo_dq"]
    # The rerun retrains only wo_dq, then evaluates what is missing: wo_lq (fixed now) and wo_dq, not wo_ipi again.
    calls.clear()
    broken_eval.clear()
    assert ablate_main(argv) == 1  # wo_dq still fails to train
    assert [c[:2] for c in calls] == [("fit", "wo_dq"), ("evaluate", "wo_lq")]
    calls.clear()
    assert ablate_main(argv) == 1 and [c[:2] for c in calls] == [("fit", "wo_dq")]
    # Slurm campaigns do not evaluate: the error says what to run instead, before anything is submitted.
    assert ablate_main(argv[1:]) == 2
    assert "--local only" in capsys.readouterr().err


def test_missing_data_builds_the_embedded_dataset_once(tmp_path, monkeypatch):
    built = []

    def fake_build(videos_dir, data_dir, **kwargs):
        built.append((videos_dir, data_dir))

    import animatex_train.embedded_dataset as embedded

    monkeypatch.setattr(embedded, "build_embedded_dataset", fake_build)
    monkeypatch.chdir(tmp_path)  # the tiny recipe's demo_run/data/... does not exist here
    out, console = tmp_path / "out", local_campaign.Console()
    overrides = local_campaign.data_overrides([str(TINY_RECIPE)], [], out, console)
    assert built == [(out / "data" / "videos", out / "data" / "shards")]
    assert f"--data.anchor_pool={out / 'data' / 'shards' / 'anchors.npy'}" in overrides
    # Existing data (here given by an overlay) is used as it is, and so is data given after --.
    manifest, anchors = tmp_path / "manifest.json", tmp_path / "anchors.npy"
    manifest.write_text("{}")
    anchors.write_bytes(b"")
    overlay = tmp_path / "data.yaml"
    overlay.write_text(
        yaml.safe_dump({"data": {"train": [{"manifest": str(manifest)}], "val": None, "anchor_pool": str(anchors)}})
    )
    assert local_campaign.data_overrides([str(TINY_RECIPE), str(overlay)], [], out, console) == []
    assert local_campaign.data_overrides([str(TINY_RECIPE)], ["--data.train=[]"], out, console) == []
    # Any other recipe fails instead of silently training on synthetic clips.
    paper = TINY_RECIPE.parents[1] / "train" / "animatex_paper.yaml"
    with pytest.raises(CampaignError, match="data/prepared/manifest.json"):
        local_campaign.data_overrides([str(paper)], [], out, console)
    assert len(built) == 1


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """A 32x32, 6-frame dataset with an anchor pool, and an overlay pointing the tiny recipe at it."""
    root = tmp_path_factory.mktemp("ablate_data")
    manifest = build_tiny_dataset(root, num_train_shards=2, per_shard=4, frames=6, size=(32, 32))
    assert (
        anchor_pool_main(
            [
                "--shards",
                str(root / "train"),
                "--output",
                str(root / "anchors.npy"),
                "--num_anchors",
                "8",
                "--split",
                "any",
            ]
        )
        == 0
    )
    overlay = root / "data.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "train": [{"manifest": str(manifest)}],
                    "val": [{"manifest": str(manifest), "split": "val"}],
                    "anchor_pool": str(root / "anchors.npy"),
                    "num_frames": 4,
                    "num_workers": 0,
                },
                "model": {"empty_prompt_cache": None, "validation": {"sample_clips": False}},
                "trainer": {"enable_model_summary": False},
            }
        )
    )
    return overlay


def test_local_campaign_end_to_end(tiny_data, tmp_path, capsys):
    out = tmp_path / "campaign"
    argv = [
        "--local",
        "--recipe",
        str(TINY_RECIPE),
        "--overlay",
        str(tiny_data),
        "--only",
        "wo_ipi,wo_add",
        "--max_steps",
        "2",
        "--out",
        str(out),
        "--wandb",
        "disabled",
        "--group",
        "test-group",
    ]
    assert ablate_main(argv) == 0
    printed = capsys.readouterr().out
    rows = list(csv.DictReader((out / "ablations.csv").open()))
    assert [r["name"] for r in rows] == ["wo_ipi", "wo_add"]
    for row in rows:
        assert row["status"] == "finished" and row["steps"] == "2", row
        assert 0 < float(row["train_loss"]) < 10 and 0 < float(row["val_loss"]) < 10 and float(row["wall_s"]) > 0
        assert f"| {row['name']} |" in printed
    for name in ("wo_ipi", "wo_add"):
        config = yaml.safe_load(next((out / name).rglob("config.yaml")).read_text())
        assert config["tracking"]["group"] == "test-group" and config["tracking"]["name"] == name
        assert config["trainer"]["max_steps"] == 2
    assert config["data"]["epi"]["rescale"]["enable_add"] is False
    # Rerunning skips the finished runs (no training process starts).
    assert ablate_main(argv) == 0
    assert "skip wo_ipi: finished" in capsys.readouterr().out
    assert json.loads((out / "wo_add" / "ablation.json").read_text())["attempts"] == 1


def test_slurm_dry_run_prints_one_sbatch_per_ablation(tmp_path, capsys):
    out = tmp_path / "campaign"
    assert (
        ablate_main(
            [
                "--recipe",
                str(TINY_RECIPE),
                "--out",
                str(out),
                "--nodes",
                "2",
                "--gpus_per_node",
                "8",
                "--time",
                "1-00:00:00",
                "--max_steps",
                "1000",
                "--dry_run",
                "--",
                "--seed_everything=7",
            ]
        )
        == 0
    )
    lines = [shlex.split(line) for line in capsys.readouterr().out.splitlines() if line.startswith("env ")]
    assert len(lines) == len(CAMPAIGN) == 19
    for ablation, argv in zip(CAMPAIGN, lines, strict=True):
        assert "sbatch" in argv and f"RUN_DIR={out / ablation.name}" in argv and f"RECIPE={TINY_RECIPE}" in argv
        assert "--nodes=2" in argv and "--gpus-per-node=8" in argv and f"--job-name=ablate-{ablation.name}" in argv
        fit = argv[argv.index(str(REPO / "slurm" / "train.sbatch")) + 1 :]
        assert fit[:2] == ["--config", str(ablation.overlay())]
        assert "--tracking.group=ablations-campaign" in fit and "--trainer.max_steps=1000" in fit
        assert fit[-1] == "--seed_everything=7"
    assert not out.exists()  # a dry run leaves no trace


def test_slurm_submission_records_job_ids_and_skips_submitted(tmp_path, capsys):
    sbatch = tmp_path / "sbatch"
    sbatch.write_text(f"#!{sys.executable}\nimport sys\nprint('4242')\n")
    sbatch.chmod(0o755)
    out = tmp_path / "campaign"
    argv = [
        "--recipe",
        str(TINY_RECIPE),
        "--out",
        str(out),
        "--only",
        "wo_ipi,full",
        "--sbatch",
        str(sbatch),
        "--log_dir",
        str(tmp_path / "logs"),
    ]
    assert ablate_main(argv) == 0
    assert "submitted wo_ipi: job 4242" in capsys.readouterr().out
    assert json.loads((out / "full" / "ablation.json").read_text())["job_id"] == "4242"
    assert ablate_main(argv) == 0
    assert "skip wo_ipi: submitted (job 4242)" in capsys.readouterr().out
