"""One error style on the command line (``animatex_train/cli/errors.py``).

Each expected error class a user meets ends a real ``animatex-train`` process with a non-zero exit code and
exactly one ``error:`` line naming the file or key, and no traceback; ``--debug`` brings the traceback back.
A refused pickle (``CheckpointRefusedError``) is covered end to end in ``training/test_entry_points.py``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from support.tiny_dataset import REPO_ROOT, TINY_RECIPE, build_tiny_dataset, fit_args, fit_env

from animatex_train.cli.errors import RUNTIME_ERROR_NAMES, user_error


def _run(args: list[str], timeout_s: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "animatex_train", *args],
        cwd=REPO_ROOT,
        env=fit_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def _one_error_line(proc: subprocess.CompletedProcess, *names: str) -> str:
    output = proc.stdout + proc.stderr
    assert proc.returncode not in (0, None), output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output[-3000:]
    assert all(name in errors[0] for name in names), errors[0]
    assert "Traceback" not in output, output[-3000:]
    return errors[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli_errors")
    build_tiny_dataset(root)
    return root


def _copy(data: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(data, tmp_path / "data")
    return tmp_path / "data"


def test_unsafe_yaml_tag_names_the_file_and_runs_nothing(tmp_path):
    canary = tmp_path / "canary"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f'trainer:\n  max_steps: !!python/object/apply:os.system ["touch {canary}"]\n')
    proc = _run(["fit", "--config", str(TINY_RECIPE), "--config", str(evil)])
    line = _one_error_line(proc, f"{evil}:2", "python/object/apply:os.system")
    assert proc.returncode == 2 and "remove the tag" in line
    assert not canary.exists()


def test_missing_shard_is_a_manifest_error_naming_the_shard(data, tmp_path):
    copy = _copy(data, tmp_path)
    (copy / "train" / "tr-0002.tar").unlink()
    proc = _run(fit_args(copy, tmp_path / "run", max_steps=1))
    _one_error_line(proc, "tr-0002.tar")
    debug = _run(["--debug", *fit_args(copy, tmp_path / "run", max_steps=1)])
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ManifestError" in debug.stderr


def test_sample_missing_a_member_is_a_sample_error_naming_it(data, tmp_path):
    copy = _copy(data, tmp_path)
    shard = copy / "train" / "tr-0000.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:  # the first sample loses its pose
        for member, payload in members:
            if member.name != "tr000-c00000.pose.npy":
                import io

                tar.addfile(member, io.BytesIO(payload))
    manifest = json.loads((copy / "manifest.json").read_text())
    entry = next(s for s in manifest["shards"] if s["path"] == "train/tr-0000.tar")
    import hashlib

    entry["size_bytes"], entry["sha256"] = shard.stat().st_size, hashlib.sha256(shard.read_bytes()).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    proc = _run(fit_args(copy, tmp_path / "run", max_steps=1))
    _one_error_line(proc, "tr000-c00000", "pose")


def test_expected_errors_are_sorted_from_bugs():
    assert user_error(ValueError("model.optim.lr: must be > 0, got -1"), [])[1] == 2
    assert user_error(KeyError("bug"), []) is None and user_error(ZeroDivisionError(), []) is None
    # the names the handler matches exist as error classes of the package
    sources = "\n".join(p.read_text() for p in (REPO_ROOT / "animatex_train").rglob("*.py"))
    for name in RUNTIME_ERROR_NAMES:
        assert re.search(rf"^class {name}\(", sources, re.MULTILINE), name


def test_torchrun_elastic_restarts_are_refused_at_start_up(tmp_path):
    """What torchrun --max-restarts=1 hands its workers; the real torchrun run: training/test_elastic.py (slow)."""
    env = {**fit_env(), "TORCHELASTIC_MAX_RESTARTS": "1", "TORCHELASTIC_RESTART_COUNT": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "animatex_train", "fit", "--config", str(TINY_RECIPE)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    line = _one_error_line(proc, "--max-restarts=1", "slurm/train.sbatch")
    assert proc.returncode == 1 and "--max-restarts=0" in line
