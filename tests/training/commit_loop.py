"""Kill harness for the checkpoint commit protocol (run as a script by ``test_checkpoint_faults.py``).

``python commit_loop.py ROOT TRIALS SEED``: for each trial, fork a child that commits checkpoints in a loop
exactly as ``CrashSafeCheckpoint.save`` does on one rank (``step-<N>.tmp/``, ``state.ckpt`` written in chunks,
``fsync_tree``, then the real ``commit_checkpoint``: manifest, ``COMPLETE``, rename, ``latest``, retention),
appending each committed step to a journal; the parent SIGKILLs it after a random delay. Forking reuses
the imported modules, so a trial costs its delay only. Odd steps write a DeepSpeed-like folder of two
rank shards, even steps a single file. Writes ``ROOT/trials.json`` (each trial's folder and kill delay).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import animatex_train  # noqa: F401  (the torchvision shim, before checkpoint.py imports lightning)
from animatex_train.training.checkpoint import STATE, commit_checkpoint, fsync_tree, step_dir_name

CHUNK = 64 * 1024


def _write(path: Path, size: int, rng: random.Random) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        for _ in range(size // CHUNK):
            f.write(rng.randbytes(CHUNK))
            f.flush()  # many small writes: a kill lands mid-file often


def commit_forever(root: Path, seed: int) -> None:
    rng = random.Random(seed)
    journal = root / "journal.txt"
    step = 0
    while True:
        step += 1
        tmp, final = root / (step_dir_name(step) + ".tmp"), root / step_dir_name(step)
        tmp.mkdir(parents=True)
        if step % 2:
            for rank in range(2):
                _write(tmp / STATE / "checkpoint" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt", 8 * CHUNK, rng)
        else:
            _write(tmp / STATE, 16 * CHUNK, rng)
        fsync_tree(tmp)
        commit_checkpoint(tmp, final, step, keep_last=2)
        with journal.open("a") as f:
            f.write(f"{step}\n")
            f.flush()
            os.fsync(f.fileno())


def main(root: str, trials: int, seed: int) -> None:
    root_path = Path(root)
    rng = random.Random(seed)
    results = []
    for trial in range(trials):
        trial_root = root_path / f"trial-{trial:02d}"
        trial_root.mkdir(parents=True)
        delay = rng.uniform(0.02, 0.6)
        pid = os.fork()
        if pid == 0:  # child: commit until killed
            try:
                commit_forever(trial_root, seed * 1000 + trial)
            finally:
                os._exit(1)
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        results.append({"root": str(trial_root), "delay_s": delay})
    (root_path / "trials.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
