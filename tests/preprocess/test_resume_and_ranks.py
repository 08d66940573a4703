"""Kill-and-resume gives the uninterrupted dataset byte for byte; two ranks split the videos disjointly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from animatex_train.cli.prepare import main as prepare_main
from animatex_train.data.format.manifest import DatasetManifest
from animatex_train.preprocess.merge import MergeError, merge_dataset
from animatex_train.preprocess.prepare import prepare_dataset


@pytest.fixture(scope="module")
def four_videos(tmp_path_factory, prep) -> Path:
    """Four inputs (two real videos, each under two names) so a run has several shards to be killed between."""
    folder = tmp_path_factory.mktemp("four")
    for name, source in (
        ("a", prep.DANCE_SHORT),
        ("b", prep.DANCE_LONG),
        ("c", prep.DANCE_SHORT),
        ("d", prep.DANCE_LONG),
    ):
        shutil.copy(source, folder / f"{name}.mp4")
    return folder


def _journal_lines(output_dir: Path, rank: int = 0) -> list[dict]:
    path = output_dir / f"journal-r{rank:03d}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def test_sigkill_then_rerun_equals_an_uninterrupted_run(tmp_path, four_videos, tiny_dwpose, prep):
    reference_dir = tmp_path / "reference"
    reference = prepare_dataset(prep.make_config(four_videos, reference_dir, tiny_dwpose))
    assert len(reference.shards) == 4

    killed_dir = tmp_path / "killed"
    config_path = prep.write_yaml(prep.make_config(four_videos, killed_dir, tiny_dwpose), tmp_path / "prepare.yaml")
    process = subprocess.Popen(
        prep.prepare_command(config_path),
        cwd=prep.REPO_ROOT,
        env=prep.subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if sum(1 for line in _journal_lines(killed_dir) if line["type"] == "shard") >= 1:
            break
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    lines = _journal_lines(killed_dir)
    written = [line for line in lines if line["type"] == "shard"]
    assert 1 <= len(written) < 4 and lines[-1]["type"] != "done", "the kill must land mid-run"
    assert not (killed_dir / "manifest.json").exists()

    resumed = prepare_dataset(prep.make_config(four_videos, killed_dir, tiny_dwpose))
    assert resumed == reference
    assert prep.shard_bytes(killed_dir) == prep.shard_bytes(reference_dir)
    assert (killed_dir / "manifest.json").read_bytes() == (reference_dir / "manifest.json").read_bytes()
    summary = _journal_lines(killed_dir)[-1]["summary"]
    assert summary["skipped"] == len(written) and summary["processed"] == 4 - len(written)
    keys = [k for shard in resumed.shards for k in shard.keys]
    assert len(keys) == len(set(keys)) == 20
    assert not list(killed_dir.glob("*.tmp")) and not list(killed_dir.glob(".staging*"))


def test_two_ranks_split_disjointly_and_merge_covers_all(tmp_path, four_videos, tiny_dwpose, prep):
    out = tmp_path / "ranks"
    config = prep.make_config(four_videos, out, tiny_dwpose)
    config.encoders.num_threads = config.pose.num_threads = 1  # two processes share the 2 CI cores
    config_path = prep.write_yaml(config, tmp_path / "prepare.yaml")
    env1 = prep.subprocess_env() | {"RANK": "1", "WORLD_SIZE": "2"}  # torchrun's variables
    rank1 = subprocess.Popen(
        prep.prepare_command(config_path),
        cwd=prep.REPO_ROOT,
        env=env1,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    rank0 = prep.run_prepare_subprocess(config_path, "--rank", "0", "--world-size", "2")
    output1, _ = rank1.communicate(timeout=300)
    assert rank0.returncode == 0, rank0.stderr[-3000:]
    assert rank1.returncode == 0, output1[-3000:]
    assert not (out / "manifest.json").exists()  # with two ranks the merge is a separate step

    manifest = merge_dataset(out)
    by_rank = {r: {s.path for s in manifest.shards if f"-r00{r}-" in s.path} for r in (0, 1)}
    videos_by_rank = {r: {v for s in manifest.shards if s.path in by_rank[r] for v in s.source_videos} for r in (0, 1)}
    assert videos_by_rank == {0: {"a", "c"}, 1: {"b", "d"}}  # every 2nd video of the sorted list
    assert sorted(v.video for v in manifest.videos) == ["a.mp4", "b.mp4", "c.mp4", "d.mp4"]
    keys = [k for s in manifest.shards for k in s.keys]
    assert len(keys) == len(set(keys)) == 20
    assert DatasetManifest.load(out) == manifest
    manifest.verify_shards()

    # The CLI's merge stage gives the same manifest; merging with a rank missing is refused.
    assert prepare_main(["--config", str(config_path), "--stages", "merge"]) == 0
    assert DatasetManifest.load(out) == manifest
    (out / "journal-r001.jsonl").unlink()
    with pytest.raises(MergeError, match=r"ranks \[1\] of 2 have no journal"):
        merge_dataset(out)
