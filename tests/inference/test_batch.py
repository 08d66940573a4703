"""``--manifest``: jobs split across ranks (each rendered once), resumable, one failure recorded per job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from animatex_train.cli.animate import ALIASES
from animatex_train.inference.batch import read_manifest, resolve_rank, run_manifest
from animatex_train.inference.outputs import is_complete, meta_path


def _manifest(path, inf, jobs: int = 4, broken: int | None = None) -> None:
    lines = []
    for i in range(jobs):
        video = "missing.mp4" if i == broken else str(inf.MEDIA / "dance_1s.mp4")
        entry = {
            "ref": str(inf.MEDIA / ("portrait.jpg" if i % 2 else "rgba.png")),
            "video": video,
            "seed": i,
            "id": f"job{i}",
        }
        if i == 3:
            entry.update(frames=3, guidance=1.0)  # per-job overrides by flag name
        lines.append(json.dumps(entry))
    path.write_text("\n".join(lines) + "\n")


def _command(inf, weights, dwpose, manifest, out) -> list[str]:
    return [
        sys.executable,
        "-m",
        "animatex_train",
        "animate",
        "--manifest",
        str(manifest),
        "-o",
        str(out),
        "--checkpoint",
        str(weights.export),
        "--tiny",
        "--dwpose_det",
        str(dwpose[0]),
        "--dwpose_pose",
        str(dwpose[1]),
        "--size",
        "64x64",
        "--frames",
        "2",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--cache_dir",
        "",
        "--no_progress",
    ]


def _env(rank: int, world: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_PROCID", "SLURM_NTASKS")}
    repo = str(Path(__file__).resolve().parents[2])
    env.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])),
    )
    return env


def _journal(out) -> list[dict]:
    return [
        json.loads(line) for path in sorted(out.glob("animate-rank*.jsonl")) for line in path.read_text().splitlines()
    ]


def test_two_ranks_render_each_job_once_and_a_rerun_renders_none(inf, weights, dwpose, tmp_path):
    manifest, out = tmp_path / "jobs.jsonl", tmp_path / "out"
    _manifest(manifest, inf)
    command = _command(inf, weights, dwpose, manifest, out)
    procs = [
        subprocess.Popen(
            command, env=_env(rank, 2), cwd=inf.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for rank in range(2)
    ]
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
        assert "2 rendered, 0 already complete, 0 failed" in stdout
    done = [entry["job"] for entry in _journal(out) if entry["status"] == "done"]
    assert sorted(done) == ["job0", "job1", "job2", "job3"]  # each job exactly once
    for i in range(4):
        meta = json.loads(meta_path(out / f"job{i}.mp4").read_text())
        assert meta["rank"] == i % 2 and meta["world_size"] == 2 and meta["seed"] == i
    assert json.loads(meta_path(out / "job3.mp4").read_text())["frames"]["count"] == 3  # its override
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("job*.mp4")}
    for rank in range(2):
        rerun = subprocess.run(command, env=_env(rank, 2), cwd=inf.REPO, capture_output=True, text=True, timeout=600)
        assert rerun.returncode == 0 and "0 rendered, 2 already complete, 0 failed" in rerun.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("job*.mp4")} == stamps
    assert len([e for e in _journal(out) if e["status"] == "done"]) == 4


def test_a_failing_job_is_recorded_and_the_others_finish(inf, fast_settings, tmp_path, monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    manifest, out = tmp_path / "jobs.jsonl", tmp_path / "out"
    _manifest(manifest, inf, jobs=3, broken=1)
    settings = inf.with_changes(fast_settings, inputs={"frames": 2})
    summary = run_manifest(read_manifest(manifest, out, ALIASES), settings, out)
    assert summary == {"done": ["job0", "job2"], "skipped": [], "failed": ["job1"]}
    failure = json.loads((out / "job1.failed.json").read_text())
    assert "missing.mp4" in failure["reason"] and failure["job"] == "job1"
    assert is_complete(out / "job0.mp4") and not is_complete(out / "job1.mp4")


def test_manifest_errors_and_rank_environment(inf, tmp_path, monkeypatch):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ref": "a.png"}\n')
    with pytest.raises(ValueError, match="line 1"):
        read_manifest(bad, tmp_path, ALIASES)
    bad.write_text('{"ref": "a.png", "video": "b.mp4", "checkpoint": "other.pth"}\n')
    with pytest.raises(ValueError, match="cannot change per job"):
        read_manifest(bad, tmp_path, ALIASES)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert resolve_rank() == (1, 3)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("SLURM_PROCID", "2")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert resolve_rank() == (2, 4)


def test_animate_sbatch_runs_one_manifest_task_per_gpu(inf, tmp_path):
    log = tmp_path / "srun.log"
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text(
        f"#!/usr/bin/env python3\nimport json, sys\nopen({str(log)!r}, 'a').write(json.dumps(sys.argv) + '\\n')\n"
    )
    (tmp_path / "bin" / "srun").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(
        SLURM_JOB_ID="77",
        MANIFEST="jobs.jsonl",
        ANIMATEX_TRAIN="py -m animatex_train",
        PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
    )
    script = str(inf.REPO / "slurm" / "animate.sbatch")
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    run = subprocess.run(
        ["bash", script, "--checkpoint", "a b.pth"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    argv = json.loads(log.read_text())
    assert argv[1:] == [
        "--kill-on-bad-exit=0",
        "py",
        "-m",
        "animatex_train",
        "animate",
        "--manifest",
        "jobs.jsonl",
        "-o",
        "renders-77",
        "--checkpoint",
        "a b.pth",
    ]
    env.pop("MANIFEST")
    missing = subprocess.run(["bash", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "set MANIFEST" in missing.stderr
