"""Data integrity faults a user meets (RELIABILITY.md F14-F16, RELIABILITY_PROBE.md D5, D9, D12, D15).

* an unreadable shard fails the pre-flight check like a missing one (not placeholders every epoch);
* a latent or CLIP member of another dtype than the schema's float16 is rejected, naming key and member;
* ``anchor-pool`` names a truncated shard;
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

from animatex_train.data.anchor_pool import anchor_pool_main
from animatex_train.data.manifest import DatasetManifest, ManifestError
from animatex_train.data.schema import LATENT_STD, SampleError, decode_clip, encode_clip


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
    assert f"shard {shard}: not a readable tar" in err and "truncated" in err


def test_prepare_refuses_an_abbreviated_flag(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "animatex_train", "prepare", "--clips.num_frame", "8", "--videos",
         str(REPO_ROOT / "tests" / "fixtures" / "videos"), "--output_dir", str(tmp_path / "out")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--clips.num_frame" in errors[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
