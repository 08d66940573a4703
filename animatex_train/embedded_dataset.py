"""The embedded dataset: synthetic videos -> prepared shards -> EPI anchor pool, built once and reused.

The demo trains on it, and so does a local ablation campaign whose tiny recipe has no data of its own. It sits
above ``data/`` and ``preprocess/`` because it runs both (``data/synthetic`` itself imports only the format).
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

import animatex_train

REPO_ROOT = Path(animatex_train.__file__).resolve().parents[1]


def repo_file(relative: str) -> Path:
    """``relative`` in the clone the package runs from (recipes and data files are not installed with it)."""
    path = REPO_ROOT / relative
    if not path.exists():
        raise FileNotFoundError(f"{relative} not found next to the package ({path}); run from a clone")
    return path


def build_embedded_dataset(
    videos_dir: Path,
    data_dir: Path,
    seed: int = 0,
    console: Console | None = None,
    timings: dict[str, float] | None = None,
    num_stages: int = 3,
) -> None:
    """Synthetic videos -> prepared shards -> EPI anchor pool.

    Each step is skipped when its output exists, so a rerun (or a second user, e.g. ``ablate --local``) reuses
    the dataset. Stage titles are numbered ``i/num_stages`` to fit the caller's own progress.

    Args:
        videos_dir: where the synthetic videos and their ``metadata.jsonl`` go.
        data_dir: where the shards, ``manifest.json`` and ``anchors.npy`` go.
        seed: seed of the anchor-pool sampling.
        console: where the stage titles are printed.
        timings: filled with the seconds each stage took.
        num_stages: the total number of stages the caller shows.

    Raises:
        InputError, JournalError, MergeError: preparation failed (``preprocess/``).
        AnchorPoolError: the shards hold no full-body frame.
    """
    console = console or Console()
    timings = {} if timings is None else timings
    start = time.perf_counter()
    console.rule(f"[bold]1/{num_stages} synthetic dataset")
    if not (videos_dir / "metadata.jsonl").exists():
        from animatex_train.data.synthetic.dataset import SyntheticDatasetConfig, write_synthetic_dataset

        config = SyntheticDatasetConfig.from_yaml(repo_file("data/embedded_dataset.yaml"))
        write_synthetic_dataset(videos_dir, config)
    timings["synthetic videos"] = time.perf_counter() - start

    start = time.perf_counter()
    console.rule(f"[bold]2/{num_stages} prepare shards")
    if not (data_dir / "manifest.json").exists():
        from animatex_train.preprocess.prepare import parse_prepare_config, prepare_dataset

        config = parse_prepare_config(
            [
                "--config",
                str(repo_file("data/embedded_prepare.yaml")),
                "--videos",
                str(videos_dir),
                "--metadata",
                str(videos_dir / "metadata.jsonl"),
                "--output_dir",
                str(data_dir),
            ]
        )
        prepare_dataset(config)
    timings["prepare"] = time.perf_counter() - start

    start = time.perf_counter()
    console.rule(f"[bold]3/{num_stages} anchor pool")
    anchors = data_dir / "anchors.npy"
    if not anchors.exists():
        from animatex_train.data.epi.anchor_pool import anchor_pool_from_sources

        anchor_pool_from_sources([str(data_dir)], num_anchors=32, seed=seed).save(anchors)
    timings["anchor pool"] = time.perf_counter() - start


def embedded_dataset_overrides(data_dir: Path) -> list[str]:
    """``fit`` arguments that point the tiny recipe at a dataset built by ``build_embedded_dataset``."""
    return [
        f"--data.train=[{{manifest: {data_dir / 'manifest.json'}}}]",
        f"--data.val=[{{manifest: {data_dir / 'manifest.json'}, split: val}}]",
        f"--data.anchor_pool={data_dir / 'anchors.npy'}",
        f"--model.empty_prompt_cache={data_dir / 'zero_y.safetensors'}",
    ]
