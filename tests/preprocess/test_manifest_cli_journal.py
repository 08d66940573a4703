"""The manifest format, the CLI's config handling, and the journal's crash tolerance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from animatex_train.cli.arguments import normalise_flags as _normalise_flags
from animatex_train.cli.prepare import main as prepare_main
from animatex_train.data.format.manifest import DatasetManifest, ManifestError, ShardEntry
from animatex_train.preprocess.journal import JournalError, RankJournal, read_journal
from animatex_train.preprocess.rejects import Reject


def _manifest(**changes) -> DatasetManifest:
    shard = ShardEntry(
        path="shard-train-r000-000000.tar",
        split="train",
        num_samples=2,
        num_frames=16,
        size_bytes=3,
        sha256="00",
        keys=["v-c00000", "v-c00001"],
        source_videos=["v"],
        resolutions={"64x48": 2},
    )
    fields = dict(
        name="t",
        schema_version=1,
        resolutions_px=[(64, 48)],
        fps=8.0,
        num_frames_per_clip=8,
        encoders={"vae": "x"},
        shards=[shard],
    )
    return DatasetManifest(**(fields | changes))


def test_manifest_round_trip_and_validation(tmp_path):
    manifest = _manifest()
    manifest.save(tmp_path / "manifest.json")
    loaded = DatasetManifest.load(tmp_path)
    assert loaded == manifest and loaded.root == tmp_path and loaded.num_samples == 2
    assert loaded.shard_paths("train") == [tmp_path / "shard-train-r000-000000.tar"] and loaded.shard_paths("val") == []
    with pytest.raises(ManifestError, match="missing"):
        loaded.verify_shards()
    (tmp_path / "shard-train-r000-000000.tar").write_bytes(b"abc")
    with pytest.raises(ManifestError, match="sha256"):
        loaded.verify_shards()
    loaded.verify_shards(check_hash=False)

    data = json.loads((tmp_path / "manifest.json").read_text())
    for change, message in (
        ({"shards": [dict(data["shards"][0], path="../escape.tar")]}, "inside the dataset folder"),
        ({"shards": [data["shards"][0], data["shards"][0]]}, "listed twice"),
        ({"schema_version": 99}, "schema version 99"),
        ({"shards": [dict(data["shards"][0], num_samples="2")]}, "'num_samples' should be int"),
        ({"shards": [dict(data["shards"][0], num_samples=3)]}, "num_samples 3 but 2 keys"),
    ):
        (tmp_path / "bad.json").write_text(json.dumps(data | change))
        with pytest.raises(ManifestError, match=message):
            DatasetManifest.load(tmp_path / "bad.json")
    with pytest.raises(ManifestError, match="no such manifest"):
        DatasetManifest.load(tmp_path / "absent")


def test_cli_reports_config_errors(tmp_path, capsys, prep):
    base = [
        "--videos",
        str(prep.VIDEOS),
        "--output_dir",
        str(tmp_path / "out"),
        "--encoders.vae.tiny",
        "true",
        "--encoders.clip.tiny",
        "true",
        "--progress",
        "false",
    ]
    assert prepare_main([*base, "--clips.resolutions_px", "[[65, 48]]"]) == 2
    assert "clips.resolutions_px" in capsys.readouterr().err
    assert prepare_main([*base, "--pose.method", "dwpose", "--pose.det_model", str(tmp_path / "no.onnx")]) == 2
    assert "pose.det_model" in capsys.readouterr().err
    assert prepare_main([*base, "--stages", "pose,train"]) == 2
    assert "stages" in capsys.readouterr().err
    assert prepare_main(["--videos", str(prep.VIDEOS), "--output_dir", str(tmp_path)]) == 2  # no encoders chosen
    assert "checkpoint is required" in capsys.readouterr().err
    assert prepare_main([*base, "--videos", str(tmp_path / "nothing_here")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_cli_config_file_and_flags(tmp_path, prep, tiny_dwpose):
    config = prep.make_config(prep.DANCE_SHORT, tmp_path / "out", tiny_dwpose)
    path = prep.write_yaml(config, tmp_path / "prepare.yaml")
    assert prepare_main(["--config", str(path), "--clips.max-clips-per-video", "2", "--world-size", "1"]) == 0
    manifest = DatasetManifest.load(tmp_path / "out")
    assert manifest.num_samples == 2 and [v.video for v in manifest.videos] == ["dance1_right.mp4"]
    assert _normalise_flags(["--world-size=2", "--a-b", "x-y"]) == ["--world_size=2", "--a_b", "x-y"]


def test_journal_survives_a_torn_last_line_and_refuses_other_settings(tmp_path):
    header = {"rank": 0, "world_size": 1, "fingerprint": "f1", "settings": {"clips": 1}}
    journal = RankJournal.open(tmp_path, 0, header)
    journal.record_reject(Reject("a.mp4", "unreadable", "x"))
    journal.record_reject(Reject("b.mp4", "error", "disk full"))
    with journal.path.open("a") as handle:
        handle.write('{"type": "shard", "sha')  # the crash hit mid-write
    reopened = RankJournal.open(tmp_path, 0, header)
    assert reopened.state.done_videos() == {"a.mp4"}  # "error" rejects are retried
    assert journal.path.read_text().endswith("}\n")
    with pytest.raises(JournalError, match=r"changed: \['clips'\]"):
        RankJournal.open(tmp_path, 0, header | {"fingerprint": "f2", "settings": {"clips": 2}})
    Path(journal.path).write_text("not json\n")
    with pytest.raises(JournalError, match="corrupt"):
        read_journal(journal.path)
