"""Data integrity faults a user meets (docs/reliability.md F14-F16, docs/reliability.md probe D5, D9, D12, D15).

* an unreadable shard fails the pre-flight check like a missing one (not placeholders every epoch);
* a latent or CLIP member of another dtype than the schema's float16 is rejected, naming key and member;
* ``anchor-pool`` names a truncated shard (``ShardReadError`` of the shared reader);
* ``prepare`` refuses abbreviated flags (``--clips.num_frame`` is not ``--clips.num_frames``).
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support.shards import make_record, write_shards
from support.tiny_dataset import REPO_ROOT, build_tiny_dataset

from animatex_train.cli.anchor_pool import main as anchor_pool_main
from animatex_train.data.format.manifest import DatasetManifest, ManifestError
from animatex_train.data.format.schema import LATENT_STD, SampleError, decode_clip, encode_clip


def test_unreadable_shard_fails_verification_naming_it(tmp_path, monkeypatch):
    manifest = DatasetManifest.load(build_tiny_dataset(tmp_path))
    victim = tmp_path / "train" / "tr-0001.tar"
    original_open = Path.open

    def open_as_without_permission(self, *args, **kwargs):  # tests run as root, where chmod 000 still reads
        if self == victim:
            raise PermissionError(13, "Permission denied", str(self))
        return original_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_as_without_permission)
    with pytest.raises(ManifestError, match=r"train/tr-0001.tar: unreadable \(Permission denied\)"):
        manifest.verify_shards(check_hash=False)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def test_a_float64_latent_is_rejected_naming_key_and_member():
    raw = encode_clip(make_record("v", 0))
    raw["__key__"] = "v-c00000"
    decode_clip(dict(raw))  # the schema's own encoding passes
    raw[LATENT_STD] = _npy(np.load(io.BytesIO(raw[LATENT_STD])).astype(np.float64))
    with pytest.raises(SampleError, match=r"'v-c00000'.*latent_std.npy is float64, the schema stores float16"):
        decode_clip(raw)


def test_anchor_pool_names_a_truncated_shard(tmp_path, capsys):
    (info,) = write_shards(tmp_path / "shards", 1, 4)
    shard = Path(info.url)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])
    assert anchor_pool_main(["--shards", str(shard), "--output", str(tmp_path / "pool.npy"), "--split", "any"]) == 1
    err = capsys.readouterr().err
    assert str(shard) in err and "truncated" in err


def test_prepare_refuses_an_abbreviated_flag(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "animatex_train",
            "prepare",
            "--clips.num_frame",
            "8",
            "--videos",
            str(REPO_ROOT / "tests" / "fixtures" / "videos"),
            "--output_dir",
            str(tmp_path / "out"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--clips.num_frame" in errors[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_foreign_and_duplicate_groups_are_skipped_by_key_and_nothing_else_is_lost(tmp_path, caplog):
    """D6: four foreign members used to shift every later sample of the shard onto the wrong plan entry."""
    import logging

    from support.shards import index_of, write_tar

    from animatex_train.data.loading.epoch_plan import Layout, ShardInfo
    from animatex_train.data.loading.loader import ShardStreamLoader
    from animatex_train.data.loading.sample_assembly import WindowConfig
    from animatex_train.data.loading.stream import ShardStream, StreamSettings

    samples = [encode_clip(make_record("e000", c)) for c in range(4)]
    for i, sample in enumerate(samples):
        sample["__key__"] = f"e000-c{i:05d}"
    foreign = {"__key__": "../../../outside", "meta.json": b"{}"}
    duplicate = dict(samples[0])  # not adjacent: adjacent members of one key are one group (WebDataset's rule)
    shard = tmp_path / "evil.tar"
    write_tar(
        shard, [foreign, samples[0], samples[1], duplicate, {"__key__": "stray", "x.txt": b"1"}, samples[2], samples[3]]
    )
    keys = tuple(f"e000-c{c:05d}" for c in range(4))
    index = index_of((ShardInfo(str(shard), keys, (6,) * 4, 32, 32),))
    layout = Layout(world_size=1, workers=1, batch_size=2, shuffle_buffer=4, seed=0)
    stream = ShardStream(StreamSettings(index, layout, 0, WindowConfig(num_frames=4), clip_dim=8))
    with caplog.at_level(logging.WARNING):
        batches = list(ShardStreamLoader(stream, num_workers=0))
    valid = {k: v for b in batches for k, v in zip(b.keys, b.valid.tolist(), strict=True)}
    assert valid == dict.fromkeys(keys, True), caplog.text
    text = caplog.text
    assert "evil.tar" in text and "'../../../outside', not in the shard's manifest entry" in text
    assert "'stray', not in" in text and "key 'e000-c00000' (duplicate)" in text


def test_remote_shard_urls_in_a_manifest_work_only_when_allowed(tmp_path):
    """``data.allow_remote_urls`` used to do nothing: a ``pipe:`` shard was joined to the dataset folder, "missing"."""
    import json

    from animatex_train.data.loading.datamodule import DatasetSource, load_index
    from animatex_train.data.loading.epoch_plan import Layout
    from animatex_train.data.loading.loader import ShardStreamLoader
    from animatex_train.data.loading.sample_assembly import WindowConfig
    from animatex_train.data.loading.stream import ShardStream, StreamSettings

    manifest_path = build_tiny_dataset(tmp_path, num_train_shards=1, num_val_shards=1)
    data = json.loads(manifest_path.read_text())
    entry = next(s for s in data["shards"] if s["split"] == "train")
    entry["path"] = f"pipe:cat {tmp_path / entry['path']}"
    manifest_path.write_text(json.dumps(data))
    source = DatasetSource(manifest=str(manifest_path))
    with pytest.raises(ManifestError, match=r"pipe:cat .*tr-0000.tar: a remote URL .*data.allow_remote_urls: true"):
        load_index([source])
    index = load_index([source], allow_remote_urls=True)
    assert index.datasets[0][0].url == entry["path"]
    layout = Layout(world_size=1, workers=1, batch_size=2, shuffle_buffer=4, seed=0)
    settings = StreamSettings(index, layout, 0, WindowConfig(num_frames=4), clip_dim=64, allow_remote_urls=True)
    batches = list(ShardStreamLoader(ShardStream(settings), num_workers=0))
    assert sorted(k for b in batches for k, v in zip(b.keys, b.valid.tolist(), strict=True) if v) == entry["keys"]
